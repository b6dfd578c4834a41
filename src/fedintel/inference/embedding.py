"""Sentence embeddings, a small linear classifier on top, and a labelled multi-domain corpus.

Used by expert routing (a query goes to the expert whose domain its embedding is closest to) and by
federated analytics (each device fits its own classifier on its own data; only class probabilities
leave the device). The encoder is MiniLM (``minilm-l6``, mean-pooled and L2-normalised, as
sentence-transformers does for all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

DEFAULT_DOMAINS = ("ai", "coding", "emotion", "humor", "literature", "psychology", "tech_support", "trivia")


class Encoder:
    """Mean-pooled, normalised sentence embeddings from a BERT-style encoder (no hub access)."""

    def __init__(self, name: str = "minilm-l6", max_length: int = 128, batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        from fedintel.models.loader import resolve_model_dir

        if name in ("tiny-bert",):
            raise ValueError("the router needs a pretrained encoder; use minilm-l6 or a local directory")
        path = resolve_model_dir(name)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), dim)`` unit vectors."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)


class LinearHead:
    """Multinomial logistic regression on fixed embeddings (L-BFGS, L2-regularised, deterministic)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight = weight
        self.bias = bias

    @classmethod
    def fit(cls, x: torch.Tensor, y: list[int], num_labels: int, l2: float = 1e-3, steps: int = 100,
            seed: int = 0) -> LinearHead:
        """Fit on embeddings ``x`` and labels ``y`` (classes never seen get a very negative bias)."""
        if len(y) != x.shape[0] or not y:
            raise ValueError(f"need as many labels as embeddings, got {len(y)} and {x.shape[0]}")
        if max(y) >= num_labels or min(y) < 0:
            raise ValueError(f"labels must be within 0..{num_labels - 1}")
        torch.manual_seed(seed)
        target = torch.tensor(y)
        w = torch.zeros(num_labels, x.shape[1], requires_grad=True)
        b = torch.zeros(num_labels, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w.T + b, target) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            seen = torch.zeros(num_labels, dtype=torch.bool)
            seen[target] = True
            b[~seen] = -30.0
        return cls(w.detach(), b.detach())

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, num_labels)`` class probabilities."""
        return torch.softmax(x @ self.weight.T + self.bias, dim=-1)


def load_labelled(path: str | Path, text_field: str = "text", label_field: str = "label") -> tuple[list[str], list[int]]:
    """Texts and integer labels from a JSONL file (one object per line)."""
    texts, labels = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(str(row[text_field]))
            labels.append(int(row[label_field]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: expected a JSON object with {text_field!r} and integer {label_field!r} "
                             f"({err})") from None
    if not texts:
        raise ValueError(f"{path}: no labelled rows")
    return texts, labels


def write_labelled(path: str | Path, texts: list[str], labels: list[int]) -> Path:
    """Write texts and labels as JSONL."""
    path = Path(path)
    path.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels, strict=True)))
    return path


def domain_corpus(domains: tuple[str, ...] | list[str] = DEFAULT_DOMAINS, per_domain: int = 60,
                  seed: int = 0) -> list[tuple[str, int]]:
    """``(question + answer, domain index)`` pairs from the English chatterbot corpus, shuffled."""
    import yaml

    from fedintel.models.sources import package_dir

    root = package_dir("chatterbot_corpus") / "data" / "english"
    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    for d, name in enumerate(domains):
        f = root / f"{name}.yml"
        if not f.is_file():
            known = sorted(p.stem for p in root.glob("*.yml"))
            raise ValueError(f"unknown domain {name!r}; the corpus has {', '.join(known)}")
        convs = yaml.safe_load(f.read_text()).get("conversations", [])
        pairs = [" ".join(str(x) for x in c[:2]) for c in convs if c]
        rng.shuffle(pairs)
        out += [(p, d) for p in pairs[:per_domain]]
    rng.shuffle(out)
    return out
