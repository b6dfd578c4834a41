"""Instruction data (chat template, loss on the response only) and `hf:` datasets read with `datasets`."""

import json

import pytest

from fedintel.config import ConfigError, DataConfig, ModelConfig, parse_config
from fedintel.data.corpora import DatasetError
from fedintel.data.federated import build_federated_data, load_records
from fedintel.data.tokenize import collate, format_prompt, tokenize_instructions
from fedintel.experiment import run_experiment
from fedintel.models.loader import load_base_model


@pytest.fixture(scope="module")
def tok():
    return load_base_model(ModelConfig(name="tiny-llama")).tokenizer


def test_completion_only_mask_token_by_token(tok):
    prompts, responses = ["What is the capital of France?", "Name a colour."], ["Paris.", "Blue, like the sky."]
    ts = tokenize_instructions(prompts, responses, tok, 128, systems=["Be brief.", None])
    batch = collate(ts, [0, 1], tok.pad_token_id, "causal_lm")
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids, start = ts.input_ids[row], ts.loss_start[row]
        prompt_ids = tok(format_prompt(tok, p, "Be brief." if row == 0 else None), add_special_tokens=False)["input_ids"]
        assert ids[:start] == prompt_ids  # the chat template's user turn and assistant header, exactly
        assert tok.decode(ids[start:]) == r + tok.eos_token  # the response, ended by the end-of-turn token
        labels = batch["labels"][row].tolist()
        for pos, label in enumerate(labels):
            if pos < start or pos >= len(ids):
                assert label == -100, (row, pos)  # prompt and padding carry no loss
            else:
                assert label == ids[pos], (row, pos)  # every response token does
    assert "<|im_start|>assistant" in tok.decode(ts.input_ids[0][: ts.loss_start[0]])


def test_truncation_cuts_the_response_tail_then_the_prompt_head(tok):
    long_response = " ".join(["word"] * 100)
    ts = tokenize_instructions(["Short question?"], [long_response], tok, 48)
    assert len(ts.input_ids[0]) == 48 and ts.loss_start[0] < 48  # the response's tail is cut
    long_prompt = " ".join(["context"] * 200)
    ts = tokenize_instructions([long_prompt], ["Yes."], tok, 32)
    ids, start = ts.input_ids[0], ts.loss_start[0]
    assert len(ids) <= 32 and tok.decode(ids[start:]) == "Yes." + tok.eos_token  # the prompt's head is cut


def test_chatterbot_trains_as_instruction_data(tiny_cfg, tmp_path):
    cfg = tiny_cfg(data={"prompt_field": "prompt", "response_field": "response"}, federation={"rounds": 2})
    res = run_experiment(cfg, tmp_path / "sft")
    losses = [r["eval_loss"] for r in res.rounds]
    assert losses[-1] < losses[0], losses


def test_instruction_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.prompt_field and data.response_field"):
        parse_config({"data": {"prompt_field": "q"}})
    with pytest.raises(ConfigError, match="data.system_field"):
        parse_config({"data": {"system_field": "s"}})
    with pytest.raises(ConfigError, match="model.task causal_lm"):
        parse_config({"data": {"dataset": "vader", "prompt_field": "a", "response_field": "b"},
                      "model": {"name": "minilm-l6", "task": "classification"}})
    with pytest.raises(DatasetError, match=r"data\.response_field: column 'answer'"):
        load_records(DataConfig(dataset="chatterbot", prompt_field="prompt", response_field="answer"))


def test_hf_dataset_from_a_local_directory(tmp_path, tok):
    data_dir = tmp_path / "my_sft"
    data_dir.mkdir()
    rows = [{"instruction": f"Say the number {i}.", "output": f"{i}", "category": "numbers" if i % 2 else "even"}
            for i in range(60)]
    (data_dir / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(dataset=f"hf:{data_dir}", split="train", prompt_field="instruction", response_field="output",
                     domain_field="category", samples_per_client=10, global_eval_samples=8, max_length=64)
    assert len(load_records(cfg)) == 60
    fd = build_federated_data(cfg, tok, "causal_lm", 3, 0)
    assert len(fd.clients) == 3 and fd.clients[0].train.loss_start is not None
    assert set(fd.domain_eval) == {"numbers", "even"}


def test_hf_dataset_not_cached_offline_is_one_clear_error():
    with pytest.raises(DatasetError, match=r"(?i)data\.dataset: cannot load nobody-here/no-such-dataset.*offline"):
        load_records(DataConfig(dataset="hf:nobody-here/no-such-dataset"))
    with pytest.raises(ConfigError, match="data.dataset"):
        parse_config({"data": {"dataset": "hf:"}})
