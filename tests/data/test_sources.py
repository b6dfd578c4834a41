"""A mixture of datasets (``data.sources``), one domain each with its own columns: the layout of Fig. 6b's
GLUE sst2 / qnli / qqp + Amazon polarity, here as local `hf:` directories and JSON files."""

import csv
import json

import pytest

from fedintel.config import ConfigError, DataConfig, ModelConfig, parse_config
from fedintel.data.corpora import DatasetError
from fedintel.data.federated import build_federated_data, load_records
from fedintel.models.loader import load_base_model


@pytest.fixture(scope="module")
def tok():
    return load_base_model(ModelConfig(name="tiny-bert", task="classification")).tokenizer


def _sources(tmp_path):
    sst = tmp_path / "sst2"  # a CSV directory read by datasets.load_dataset (hf:<dir>)
    sst.mkdir()
    with open(sst / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label", "idx"])
        for i in range(40):
            w.writerow([f"a {'good' if i % 2 else 'bad'} film number {i}", i % 2, i])
    qnli = tmp_path / "qnli"  # JSON Lines, sentence pairs under other names
    qnli.mkdir()
    (qnli / "train.jsonl").write_text("\n".join(json.dumps(
        {"question": f"Who made thing {i}?", "sentence": f"Thing {i} was made by person {i if i % 2 else 99}.",
         "label": i % 2}) for i in range(40)))
    qqp = tmp_path / "qqp.jsonl"  # dataset: json with data_files
    qqp.write_text("\n".join(json.dumps({"question1": f"How do I cook rice {i}?", "question2":
                                         f"What is rice {i}?", "is_duplicate": i % 2}) for i in range(40)))
    return [
        {"domain": "sst2", "dataset": f"hf:{sst}", "text_field": "sentence"},
        {"domain": "qnli", "dataset": f"hf:{qnli}", "text_field": "question", "text_pair_field": "sentence"},
        {"domain": "qqp", "dataset": "json", "data_files": [str(qqp)], "text_field": "question1",
         "text_pair_field": "question2", "label_field": "is_duplicate"},
    ]


def test_a_mixture_reads_each_source_with_its_columns_into_one_domain_each(tmp_path, tok):
    cfg = DataConfig(sources=_sources(tmp_path), text_pair_field="text_pair", samples_per_client=8,
                     global_eval_samples=12, max_length=48, partition={"method": "by_domain"})
    assert cfg.name == "mixture of sst2, qnli, qqp"
    rows = load_records(cfg, "classification")
    assert len(rows) == 120 and {r["domain"] for r in rows} == {"sst2", "qnli", "qqp"}
    by = {d: [r for r in rows if r["domain"] == d] for d in ("sst2", "qnli", "qqp")}
    assert all(r["text_pair"] is None for r in by["sst2"]) and by["sst2"][3]["text"] == "a good film number 3"
    assert by["qnli"][1] == {"text": "Who made thing 1?", "label": 1, "text_pair": "Thing 1 was made by person 1.",
                             "domain": "qnli"}
    assert [r["label"] for r in by["qqp"][:4]] == [0, 1, 0, 1]
    fd = build_federated_data(cfg, tok, "classification", 6, 0)
    assert sorted(c.domain for c in fd.clients) == ["qnli", "qnli", "qqp", "qqp", "sst2", "sst2"]
    sep = tok.sep_token_id
    for c in fd.clients:  # pairs are joined by the tokenizer's separator: two [SEP] in a pair, one alone
        seps = [list(ids).count(sep) for ids in c.train.input_ids]
        assert set(seps) == ({1} if c.domain == "sst2" else {2}), (c.domain, seps)
    assert set(fd.domain_eval) == {"sst2", "qnli", "qqp"}
    only = load_records(cfg.model_copy(update={"domains": ["qqp"]}), "classification")
    assert {r["domain"] for r in only} == {"qqp"}


def test_mixture_errors_name_the_source_and_the_field(tmp_path):
    src = _sources(tmp_path)
    with pytest.raises(ConfigError, match=r"data.sources\[1\] \(qnli\) has sentence pairs.*data.text_pair_field"):
        parse_config({"data": {"sources": src}})
    with pytest.raises(ConfigError, match="data.sources and data.dataset"):
        parse_config({"data": {"dataset": "vader", "sources": src, "text_pair_field": "text_pair"}})
    with pytest.raises(ConfigError, match="data.sources and data.split"):  # would be ignored, so refused
        parse_config({"data": {"sources": src, "text_pair_field": "text_pair", "split": "train[:10]"}})
    with pytest.raises(ConfigError, match="domains must differ"):
        parse_config({"data": {"sources": [src[0], src[0]]}})
    with pytest.raises(ConfigError, match=r"data.sources\[0\] \(sst2\): instruction sources"):
        parse_config({"data": {"sources": [src[0]], "prompt_field": "prompt", "response_field": "response"}})
    bad = [dict(src[0], text_field="review")]
    with pytest.raises(DatasetError, match=r"data.sources\[0\] \(sst2\): data.text_field: column 'review'"):
        load_records(DataConfig(sources=bad), "classification")
