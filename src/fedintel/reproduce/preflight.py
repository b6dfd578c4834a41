"""Before a long run: can every model and dataset the experiments name be read, from the hub or its cache?

The paper-scale set (``fedintel reproduce paper --full``) names LLaMA-7B, GPT-2, OpenOrca, MDAAG, GLUE and
Amazon polarity by their Hugging Face ids. A run that cannot read one of them fails only when it reaches it,
after the runs before it have used the accelerator. This check looks once, before any run starts: a resource
is ready when it is in the local caches (a model's ``config.json`` in the hub cache, a dataset's files in the
hub cache or a prepared copy in the ``datasets`` cache) or when the hub answers. Built-in models and local
paths need no check.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from fedintel.config import ExperimentConfig


@dataclass
class Resource:
    """One model or dataset of the hub, and the experiments that use it."""

    kind: str  # "model" or "dataset"
    repo_id: str
    used_by: list[str] = field(default_factory=list)
    status: str = ""  # "cached", "hub" (not cached; the hub answers), "missing"


def hub_resources(configs: dict[str, ExperimentConfig]) -> list[Resource]:
    """The hub models and datasets the experiments name, each once, with the experiments that use it."""
    from fedintel.models.loader import is_hub_id

    found: dict[tuple[str, str], Resource] = {}

    def add(kind: str, repo_id: str, experiment: str) -> None:
        res = found.setdefault((kind, repo_id), Resource(kind, repo_id))
        if experiment not in res.used_by:
            res.used_by.append(experiment)

    for name, cfg in configs.items():
        if is_hub_id(cfg.model.name):
            add("model", cfg.model.name, name)
        datasets = [cfg.data.dataset] + [s.dataset for s in cfg.data.sources or []]
        for ds in datasets:
            if ds and ds.startswith("hf:"):
                ident = ds[3:].strip()
                if not Path(ident).expanduser().exists():
                    add("dataset", ident, name)
    return list(found.values())


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection (``HF_HUB_OFFLINE`` set: no, without trying)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _in_hub_cache(res: Resource, hub_cache: Path) -> bool:
    if res.kind == "model":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(res.repo_id, "config.json", cache_dir=hub_cache), str)
    snapshots = hub_cache / f"datasets--{res.repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in snapshots.iterdir())


def _in_datasets_cache(res: Resource, datasets_cache: Path) -> bool:
    # datasets keeps a prepared copy as <namespace>___<name>; offline, load_dataset reads it
    prepared = datasets_cache / res.repo_id.replace("/", "___")
    return res.kind == "dataset" and prepared.is_dir() and any(prepared.iterdir())


def check(configs: dict[str, ExperimentConfig], reachable: bool | None = None, hub_cache: str | Path | None = None,
          datasets_cache: str | Path | None = None) -> list[Resource]:
    """Every hub resource of ``configs`` with its status (``reachable``: None = try the hub once; the caches:
    default the standard ones, ``HF_HOME``/``HF_HUB_CACHE``/``HF_DATASETS_CACHE`` respected)."""
    from huggingface_hub import constants

    hub = Path(hub_cache or constants.HF_HUB_CACHE)
    prepared = Path(datasets_cache or os.environ.get("HF_DATASETS_CACHE")
                    or Path(constants.HF_HOME) / "datasets")
    resources = hub_resources(configs)
    online: bool | None = reachable
    for res in resources:
        if _in_hub_cache(res, hub) or _in_datasets_cache(res, prepared):
            res.status = "cached"
            continue
        if online is None:
            online = hub_reachable()
        res.status = "hub" if online else "missing"
    return resources


def missing_message(resources: list[Resource]) -> str:
    """What is missing and how to get it, in one message (empty: nothing is missing)."""
    missing = [r for r in resources if r.status == "missing"]
    if not missing:
        return ""
    lines = [f"{len(missing)} of the experiments' hub resources are not in the local caches and the hub cannot be "
             "reached (or HF_HUB_OFFLINE is set); no run was started:"]
    for r in missing:
        fetch = f"hf download {r.repo_id}" + (" --repo-type dataset" if r.kind == "dataset" else "")
        lines.append(f"  {r.kind} {r.repo_id} (used by {', '.join(r.used_by)}): on a machine with network, "
                     f"`{fetch}`, then copy the cache here (HF_HOME)")
    lines.append("Or run the experiments that have everything with --only, or pass --skip-check to try anyway.")
    return "\n".join(lines)
