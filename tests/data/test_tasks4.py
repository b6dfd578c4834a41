"""tasks4: four classification tasks that differ in kind (two sentiment, two sentence-pair tasks)."""

import json
from collections import Counter

import pytest

from fedintel.config import ConfigError, DataConfig, ModelConfig, parse_config
from fedintel.data.corpora import DatasetError, prepared_path
from fedintel.data.federated import build_federated_data
from fedintel.models.loader import load_base_model


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in prepared_path("tasks4").read_text().splitlines()]


def test_four_tasks_with_balanced_labels_and_real_pairs(rows):
    counts = Counter((r["domain"], r["label"]) for r in rows)
    assert set(d for d, _ in counts) == {"movies", "amazon", "qa", "definitions"}
    assert all(counts[(d, 0)] == counts[(d, 1)] == 750 for d in ("movies", "amazon", "qa", "definitions"))
    singles = {r["domain"] for r in rows if r["text_pair"] is None}
    assert singles == {"movies", "amazon"}  # the two sentiment tasks are single sentences
    qa_pos = [r for r in rows if r["domain"] == "qa" and r["label"] == 1]
    qa_neg = [r for r in rows if r["domain"] == "qa" and r["label"] == 0]
    assert all(r["text_pair"] for r in qa_pos + qa_neg)
    pos_pairs = {(r["text"], r["text_pair"]) for r in qa_pos}
    assert not any((r["text"], r["text_pair"]) in pos_pairs for r in qa_neg)  # negatives are real mismatches


def test_pairs_are_joined_with_the_tokenizers_separator():
    tok = load_base_model(ModelConfig(name="tiny-bert", task="classification")).tokenizer
    cfg = DataConfig(dataset="tasks4", text_pair_field="text_pair", partition={"method": "by_domain"},
                     samples_per_client=20, max_length=64)
    fd = build_federated_data(cfg, tok, "classification", 8, 0)
    pair_client = next(c for c in fd.clients if c.domain in ("qa", "definitions"))
    single_client = next(c for c in fd.clients if c.domain in ("movies", "amazon"))
    sep = tok.sep_token_id
    assert all(ids.count(sep) == 2 for ids in pair_client.train.input_ids)  # [CLS] a [SEP] b [SEP]
    assert all(ids.count(sep) == 1 for ids in single_client.train.input_ids)


def test_pairs_are_never_dropped_silently():
    tok = load_base_model(ModelConfig(name="tiny-bert", task="classification")).tokenizer
    with pytest.raises(DatasetError, match="data.text_pair_field: tasks4 holds sentence pairs"):
        build_federated_data(DataConfig(dataset="tasks4"), tok, "classification", 4, 0)
    with pytest.raises(ConfigError, match="data.text_pair_field"):
        parse_config({"engine": "flower", "data": {"dataset": "tasks4", "text_pair_field": "text_pair"},
                      "model": {"name": "minilm-l6", "task": "classification"}})
