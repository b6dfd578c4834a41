"""Build the federated view of a dataset: per-client train/eval shards and a global held-out set."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedintel.config import DataConfig
from fedintel.data import partition
from fedintel.data.corpora import BUILTIN_DATASETS, DatasetError, prepared_path
from fedintel.data.tokenize import TokenizedSet, tokenize, tokenize_instructions

log = logging.getLogger(__name__)


@dataclass
class ClientData:
    """One client's private data: never leaves the client in a real deployment."""

    client_id: int
    train: TokenizedSet
    eval: TokenizedSet
    domain: str | None = None
    train_rows: list[int] = field(default_factory=list)
    eval_rows: list[int] = field(default_factory=list)


@dataclass
class FederatedData:
    """All clients' shards plus held-out evaluation sets."""

    clients: list[ClientData]
    global_eval: TokenizedSet
    domain_eval: dict[str, TokenizedSet] = field(default_factory=dict)
    label_names: list[str] | None = None
    global_eval_rows: list[int] = field(default_factory=list)

    @property
    def client_domains(self) -> list[str | None]:
        return [c.domain for c in self.clients]


def load_records(cfg: DataConfig, task: str | None = None) -> list[dict]:
    """Rows of the configured dataset through ``datasets.load_dataset("json", ...)``.

    A row whose text (or, for ``task`` classification, label) is null or missing is a :class:`DatasetError`
    naming the file, the line and the field: it would otherwise train as the string "None" or a class of its own.
    """
    import datasets

    datasets.disable_progress_bars()
    if cfg.sources:
        return _mixture_records(cfg, task)
    if cfg.dataset.startswith("hf:"):
        ds = load_hf_dataset(cfg)
        files: list[str] = []
    elif cfg.dataset == "json":
        files = [str(Path(f).expanduser()) for f in cfg.data_files or []]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DatasetError(f"data.data_files: file not found: {missing[0]}")
    else:
        files = [str(prepared_path(cfg.dataset))]
    if files:
        try:
            ds = datasets.load_dataset("json", data_files=files, split="train")
        except Exception as err:  # datasets raises many types for unreadable files
            raise DatasetError(f"data.data_files: cannot read {files}: {err}") from None
    fields = ([("prompt_field", cfg.prompt_field), ("response_field", cfg.response_field)]
              + ([("system_field", cfg.system_field)] if cfg.system_field else [])
              if cfg.instruction else [("text_field", cfg.text_field)])
    for key, column in fields:
        if column not in ds.column_names:
            raise DatasetError(f"data.{key}: column {column!r} not in {ds.column_names}")
    if cfg.text_pair_field is not None:
        fields.append(("text_pair_field", cfg.text_pair_field))
        if cfg.text_pair_field not in ds.column_names:
            raise DatasetError(f"data.text_pair_field: column {cfg.text_pair_field!r} not in {ds.column_names}")
    elif "text_pair" in ds.column_names and any(v is not None for v in ds["text_pair"]):
        raise DatasetError(f"data.text_pair_field: {cfg.dataset} holds sentence pairs in column 'text_pair'; set "
                           "data.text_pair_field: text_pair (else the second sentence would be dropped)")
    rows = ds.to_list()
    required = [f for f in fields if f[0] != "text_pair_field"] + ([("label_field", cfg.label_field)] if task == "classification" else [])
    for setting, name in required:
        bad = next((i for i, r in enumerate(rows) if r.get(name) is None), None)
        if bad is not None:
            where = _locate(files, bad) if files else f"{cfg.dataset}, row {bad + 1}"
            raise DatasetError(f"{where}: {name!r} is null or missing (data.{setting}: {name}); "
                               "fix or remove the row")
    if cfg.domains:
        known = {str(r.get(cfg.domain_field)) for r in rows}
        unknown = [d for d in cfg.domains if d not in known]
        if unknown:
            raise DatasetError(f"data.domains: {unknown} not in the dataset's domains {sorted(known)}")
        rows = [r for r in rows if str(r.get(cfg.domain_field)) in cfg.domains]
    return rows


def _mixture_records(cfg: DataConfig, task: str | None) -> list[dict]:
    """Rows of every ``data.sources`` entry, read with its own columns and renamed to the section's, each
    tagged with its source's domain."""
    assert cfg.sources
    out: list[dict] = []
    for i, src in enumerate(cfg.sources):
        one = cfg.model_copy(update={
            "dataset": src.dataset, "data_files": src.data_files, "subset": src.subset, "split": src.split,
            "text_field": src.text_field, "text_pair_field": src.text_pair_field, "prompt_field": src.prompt_field,
            "response_field": src.response_field, "system_field": src.system_field, "label_field": src.label_field,
            "domains": None, "sources": None})
        try:
            rows = load_records(one, task)
        except DatasetError as err:
            raise DatasetError(f"data.sources[{i}] ({src.domain}): {err}") from None
        columns = [(cfg.text_field, src.text_field), (cfg.label_field, src.label_field)]
        columns += [(cfg.text_pair_field, src.text_pair_field)] if cfg.text_pair_field else []
        columns += [(cfg.prompt_field, src.prompt_field), (cfg.response_field, src.response_field)] \
            if cfg.instruction else []
        columns += [(cfg.system_field, src.system_field)] if cfg.system_field else []
        for r in rows:
            row = {mine: (r.get(theirs) if theirs is not None else None) for mine, theirs in columns}
            row[cfg.domain_field] = src.domain
            out.append(row)
    if cfg.domains:
        unknown = [d for d in cfg.domains if d not in {s.domain for s in cfg.sources}]
        if unknown:
            raise DatasetError(f"data.domains: {unknown} not among data.sources' domains")
        out = [r for r in out if r[cfg.domain_field] in cfg.domains]
    return out


def load_hf_dataset(cfg: DataConfig) -> object:
    """``data.dataset: hf:<id or directory>`` through ``datasets.load_dataset`` (the standard cache)."""
    import datasets
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    ident = cfg.dataset[3:].strip()
    what = ident + (f" (subset {cfg.subset})" if cfg.subset else "") + f", split {cfg.split!r}"
    try:
        return datasets.load_dataset(ident, cfg.subset, split=cfg.split)
    except Exception as err:  # datasets raises many types: missing, offline, bad split, bad files
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = datasets.config.HF_HUB_OFFLINE and not Path(ident).expanduser().exists()
        hint = ("; HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set and it is not in the datasets cache: load it once "
                "online, or point hf: at a local directory" if offline else "")
        raise DatasetError(f"data.dataset: cannot load {what}: {type(err).__name__}: {text}{hint}") from None


def _locate(files: list[str], index: int) -> str:
    """``file, line N`` (JSON Lines) or ``file, row N`` (a JSON array) of the ``index``-th row of ``files``."""
    import datasets

    for f in files:
        if not f.endswith(".json"):
            lines = [n for n, line in enumerate(Path(f).read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
            if index < len(lines):
                return f"{f}, line {lines[index]}"
            index -= len(lines)
        else:
            n = len(datasets.load_dataset("json", data_files=[f], split="train"))
            if index < n:
                return f"{f}, row {index + 1}"
            index -= n
    return f"{', '.join(files)}, row {index + 1}"


def dataset_task(cfg: DataConfig) -> str | None:
    """The task a built-in dataset is for (None for user JSON)."""
    if cfg.sources:
        return None
    return BUILTIN_DATASETS[cfg.dataset][0] if cfg.dataset in BUILTIN_DATASETS else None


@dataclass
class Partition:
    """Which rows each client holds and which are held out: the split alone, before tokenization.

    ``domain_held[d]`` is domain ``d``'s held-out evaluation rows (inside ``held``, never trained on)."""

    rows: list[dict]
    domains: list[str]
    labels: list[int] | None
    label_names: list[str] | None
    held: list[int]
    domain_held: dict[str, list[int]]
    client_train: list[list[int]]
    client_eval: list[list[int]]
    client_domain: list[str | None]

    def text(self, i: int, cfg: DataConfig) -> str:
        """Row ``i``'s text as a client reads it (the prompt of an instruction row)."""
        return str(self.rows[i][cfg.prompt_field if cfg.instruction else cfg.text_field])


def plan_partition(cfg: DataConfig, task: str, num_clients: int, seed: int) -> Partition:
    """Split the dataset across ``num_clients`` clients, deterministically for ``seed``."""
    expected = dataset_task(cfg)
    if expected is not None and expected != task:
        raise DatasetError(f"data.dataset: {cfg.dataset} is a {expected} dataset but model.task is {task}")
    rows = load_records(cfg, task)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A]))
    domains = [str(r.get(cfg.domain_field, "all")) for r in rows]
    labels: list[int] | None = None
    label_names: list[str] | None = None
    if task == "classification":
        if any(cfg.label_field not in r for r in rows):
            raise DatasetError(f"data.label_field: some rows lack the {cfg.label_field!r} column")
        raw = [r[cfg.label_field] for r in rows]
        label_names = sorted({str(v) for v in raw}, key=lambda s: (len(s), s))
        index = {n: i for i, n in enumerate(label_names)}
        labels = [index[str(v)] for v in raw]

    pool = list(rng.permutation(len(rows)))
    # Global held-out set first, balanced over domains, so no client ever trains on it.
    by_dom: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        by_dom[domains[i]].append(i)
    names = sorted(by_dom)
    per_dom = max(1, cfg.global_eval_samples // len(names))
    held = [i for d in names for i in by_dom[d][:per_dom]]
    held_set = set(held)
    rest = [i for i in pool if i not in held_set]

    method = cfg.partition.method
    client_domain: list[str | None] = [None] * num_clients
    if method == "iid":
        shards = partition.iid(rest, num_clients, cfg.samples_per_client, rng)
    elif method == "dirichlet":
        groups: list[object] = [labels[i] for i in rest] if labels is not None else [domains[i] for i in rest]
        split = partition.dirichlet if cfg.partition.draw == "per_client" else partition.dirichlet_by_class
        shards = split(rest, groups, num_clients, cfg.samples_per_client, cfg.partition.alpha, rng)
    else:
        shards, assigned = partition.by_domain(rest, [domains[i] for i in rest], num_clients, cfg.samples_per_client, rng)
        client_domain = list(assigned)

    train, evals = [], []
    for shard in shards:
        n_eval = int(round(len(shard) * cfg.eval_fraction))
        if cfg.eval_fraction > 0:
            n_eval = max(1, n_eval)
        if n_eval >= len(shard):
            raise DatasetError("data.eval_fraction leaves no training examples; lower it or raise samples_per_client")
        train.append(shard[n_eval:])
        evals.append(shard[:n_eval])
    domain_held = {d: by_dom[d][:per_dom] for d in names} if len(names) > 1 else {}
    log.info("partitioned %d rows into %d clients (%s)", len(rows), num_clients, method)
    return Partition(rows, domains, labels, label_names, held, domain_held, train, evals, client_domain)


def build_federated_data(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    num_clients: int,
    seed: int,
) -> FederatedData:
    """Partition the dataset across ``num_clients`` clients (:func:`plan_partition`) and tokenize each part."""
    part = plan_partition(cfg, task, num_clients, seed)
    rows, labels = part.rows, part.labels

    def tok(idx: list[int]) -> TokenizedSet:
        if cfg.instruction:
            return tokenize_instructions(
                [str(rows[i][cfg.prompt_field]) for i in idx], [str(rows[i][cfg.response_field]) for i in idx],
                tokenizer, cfg.max_length, [rows[i].get(cfg.system_field) for i in idx] if cfg.system_field else None,
            )
        pairs = [rows[i].get(cfg.text_pair_field) for i in idx] if cfg.text_pair_field else None
        return tokenize([str(rows[i][cfg.text_field]) for i in idx], tokenizer, cfg.max_length,
                        [labels[i] for i in idx] if labels else None,
                        [None if p is None else str(p) for p in pairs] if pairs is not None else None)

    clients = [ClientData(cid, tok(tr), tok(ev), part.client_domain[cid], tr, ev)
               for cid, (tr, ev) in enumerate(zip(part.client_train, part.client_eval, strict=True))]
    domain_eval = {d: tok(idx) for d, idx in part.domain_held.items()}
    return FederatedData(clients, tok(part.held), domain_eval, part.label_names, part.held)
