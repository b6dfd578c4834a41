import json

import pytest

from fedintel.config import DataConfig, ModelConfig
from fedintel.data.corpora import DatasetError, prepared_path
from fedintel.data.federated import build_federated_data, load_records
from fedintel.models.loader import load_base_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_base_model(ModelConfig(name="tiny-llama")).tokenizer


def test_chatterbot_is_real_dialogue_text():
    rows = load_records(DataConfig(dataset="chatterbot"))
    assert len(rows) > 2000
    assert len({r["domain"] for r in rows}) == 21
    assert any("thermodynamics" in r["text"] for r in rows)


def test_vader_has_four_labelled_domains():
    rows = load_records(DataConfig(dataset="vader"))
    assert {r["domain"] for r in rows} == {"tweets", "movies", "amazon", "nyt"}
    assert {r["label"] for r in rows} == {0, 1}
    assert len(rows) > 15000


def test_unknown_dataset_and_missing_json_file_name_the_field(tmp_path):
    with pytest.raises(DatasetError, match="data.dataset: unknown dataset 'nope'"):
        prepared_path("nope")
    with pytest.raises(DatasetError, match="data.data_files: file not found"):
        load_records(DataConfig(dataset="json", data_files=[str(tmp_path / "missing.jsonl")]))


def test_user_json_files_load_and_partition_the_same_way(tmp_path, tokenizer):
    path = tmp_path / "mine.jsonl"
    with path.open("w") as f:
        for i in range(60):
            f.write(json.dumps({"body": f"note number {i} about topic {i % 3}", "topic": f"t{i % 3}"}) + "\n")
    cfg = DataConfig(dataset="json", data_files=[str(path)], text_field="body", domain_field="topic",
                     samples_per_client=10, global_eval_samples=6, max_length=16, partition={"method": "by_domain"})
    fd = build_federated_data(cfg, tokenizer, "causal_lm", 3, seed=0)
    assert [c.domain for c in fd.clients] == ["t0", "t1", "t2"]
    assert all(len(c.train) + len(c.eval) == 10 for c in fd.clients)
    assert set(fd.domain_eval) == {"t0", "t1", "t2"}
    with pytest.raises(DatasetError, match="data.text_field"):
        load_records(DataConfig(dataset="json", data_files=[str(path)]))


def test_federated_split_is_deterministic_disjoint_and_truncated(tokenizer):
    cfg = DataConfig(dataset="chatterbot", samples_per_client=30, max_length=24, global_eval_samples=40)
    a = build_federated_data(cfg, tokenizer, "causal_lm", 5, seed=3)
    b = build_federated_data(cfg, tokenizer, "causal_lm", 5, seed=3)
    c = build_federated_data(cfg, tokenizer, "causal_lm", 5, seed=4)
    assert [x.train.input_ids for x in a.clients] == [x.train.input_ids for x in b.clients]
    assert [x.train.input_ids for x in a.clients] != [x.train.input_ids for x in c.clients]
    assert max(len(s) for x in a.clients for s in x.train.input_ids) <= 24
    assert all(len(x.eval) == 3 and len(x.train) == 27 for x in a.clients)
    rows = [r for x in a.clients for r in x.train_rows + x.eval_rows]
    assert len(rows) == len(set(rows)) == 150  # shards are disjoint
    assert not set(rows) & set(a.global_eval_rows)  # the global eval set is held out


def test_classification_dataset_on_causal_model_is_an_error(tokenizer):
    with pytest.raises(DatasetError, match="classification dataset but model.task is causal_lm"):
        build_federated_data(DataConfig(dataset="vader"), tokenizer, "causal_lm", 2, seed=0)


@pytest.mark.parametrize("bad_row, field", [
    ({"text": None, "label": 1}, "text"),
    ({"label": 1}, "text"),
    ({"text": "fine", "label": None}, "label"),
    ({"text": "fine"}, "label"),
])
def test_null_or_missing_text_or_label_names_file_line_and_field(tmp_path, tokenizer, bad_row, field):
    good = [{"text": f"row {i}", "label": i % 2} for i in range(20)]
    first = tmp_path / "a.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in good) + "\n")
    second = tmp_path / "b.jsonl"
    second.write_text("\n".join(json.dumps(r) for r in good[:3] + [bad_row] + good[3:]) + "\n")
    cfg = DataConfig(dataset="json", data_files=[str(first), str(second)], samples_per_client=4, global_eval_samples=2)
    with pytest.raises(DatasetError, match=rf"b\.jsonl, line 4: '{field}' is null or missing \(data\.{field}_field"):
        build_federated_data(cfg, tokenizer, "classification", 2, 0)


def test_null_label_in_a_json_array_names_the_row(tmp_path, tokenizer):
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(10)]
    rows[6]["label"] = None
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows))
    cfg = DataConfig(dataset="json", data_files=[str(path)], samples_per_client=2, global_eval_samples=2)
    with pytest.raises(DatasetError, match=r"a\.json, row 7: 'label'"):
        build_federated_data(cfg, tokenizer, "classification", 2, 0)
    build_federated_data(cfg, tokenizer, "causal_lm", 2, 0)  # labels are not read for causal LM
