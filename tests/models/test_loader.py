"""Model loading beyond the built-ins: Hugging Face ids through a real cache layout, QLoRA, checkpointing."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedintel.config import ModelConfig
from fedintel.experiment import run_experiment
from fedintel.models import sources
from fedintel.models.loader import ModelError, is_hub_id, load_base_model
from fedintel.runtime import Runtime

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REVISION = "a" * 8 + "0123456789abcdef0123456789abcdef"


def make_hub_cache(hf_home: Path) -> Path:
    """A real Hugging Face hub cache (models--org--name/{blobs,snapshots/<rev>,refs/main}) holding SmolLM2."""
    src = sources.smollm2_dir()
    repo = hf_home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "SOURCE.json":
            continue
        blob = repo / "blobs" / hashlib.sha256(f.name.encode()).hexdigest()
        blob.symlink_to(f.resolve())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return hf_home


def test_hub_id_detection(tmp_path):
    assert is_hub_id(HUB_ID) and is_hub_id("meta-llama/Llama-2-7b-hf")
    assert not is_hub_id("smollm2-135m") and not is_hub_id(str(tmp_path)) and not is_hub_id("a/b/c")


def test_hub_id_loads_from_the_standard_cache_and_trains(tmp_path):
    """`fedintel run` with a Hugging Face id, offline, against a real cache layout under $HF_HOME."""
    hf_home = make_hub_cache(tmp_path / "hf")
    cfg = {
        "name": "hub", "model": {"name": HUB_ID, "num_layers": 2},
        "data": {"dataset": "chatterbot", "max_length": 24, "samples_per_client": 8, "global_eval_samples": 8},
        "federation": {"rounds": 1, "num_clients": 2, "clients_per_round": 2, "local_steps": 1, "batch_size": 2,
                       "micro_batch_size": 2, "lr": 1e-3},
        "eval": {"max_samples": 4, "per_client": False}, "network": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs"), "run_name": "hub"}, "runtime": {"device": "cpu", "threads": 1},
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-m", "fedintel.cli", "run", str(path), "-q"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    # the same weights as the built-in SmolLM2: the same run gives the same numbers
    from fedintel.config import parse_config
    from fedintel.tracking.store import MetricsStore

    hub_rounds = MetricsStore(tmp_path / "runs" / "hub" / "metrics.db").rounds("hub")
    builtin = {**cfg, "model": {"name": "smollm2-135m", "num_layers": 2},
               "output": {"dir": str(tmp_path / "runs"), "run_name": "builtin"}}
    ref = run_experiment(parse_config(builtin))
    assert [r["eval_loss"] for r in hub_rounds] == pytest.approx([r["eval_loss"] for r in ref.rounds], rel=1e-6)
    # a revision that is not in the cache is one clear line, and no run directory is written
    cfg["model"]["revision"] = "f" * 40
    cfg["output"]["run_name"] = "bad-rev"
    path.write_text(yaml.safe_dump(cfg))
    bad = subprocess.run([sys.executable, "-m", "fedintel.cli", "run", str(path), "-q"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "model.name" in bad.stderr and "HF_HUB_OFFLINE" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs" / "bad-rev").exists()


def test_unknown_hub_id_offline_is_one_clear_error():
    with pytest.raises(ModelError, match=r"model\.name: 'nobody-here/no-such-model' is not in the Hugging Face cache"):
        load_base_model(ModelConfig(name="nobody-here/no-such-model"))


def test_revision_needs_a_hub_id():
    with pytest.raises(ModelError, match="model.revision"):
        load_base_model(ModelConfig(name="smollm2-135m", revision="main"))


def test_quantization_refused_for_random_test_models():
    with pytest.raises(ModelError, match="model.quantization"):
        load_base_model(ModelConfig(name="tiny-llama", quantization="4bit"))


def test_quantization_without_bitsandbytes_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if the package were not installed
    with pytest.raises(ModelError, match=r"model\.quantization: 4bit needs the bitsandbytes package.*fedintel\[gpu\]"):
        load_base_model(ModelConfig(name="smollm2-135m", num_layers=2, quantization="4bit"))


bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the gpu extra; `make install` installs it")


def test_4bit_nf4_base_trains_a_lora_adapter(tiny_cfg, tmp_path):
    """QLoRA on the CPU: NF4 with double quantization, bf16 compute, PEFT's k-bit preparation."""
    lm = load_base_model(ModelConfig(name="smollm2-135m", num_layers=2, quantization="4bit"),
                         Runtime(torch.device("cpu"), torch.bfloat16))
    layer = lm.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_type == "nf4"
    assert layer.compute_dtype == torch.bfloat16
    cfg = tiny_cfg(model={"name": "smollm2-135m", "num_layers": 2, "quantization": "4bit",
                          "gradient_checkpointing": True},
                   runtime={"device": "cpu", "dtype": "bfloat16"}, federation={"rounds": 2, "lr": 3e-3})
    res = run_experiment(cfg, tmp_path / "qlora")
    losses = [r["eval_loss"] for r in res.rounds]
    assert all(x == x for x in losses) and losses[-1] < losses[0], losses


def test_gradient_checkpointing_gives_the_same_update(tiny_cfg, tmp_path):
    plain = run_experiment(tiny_cfg(runtime={"device": "cpu"}, peft={"dropout": 0.0}), tmp_path / "a")
    ckpt = run_experiment(tiny_cfg(runtime={"device": "cpu"}, peft={"dropout": 0.0},
                                   model={"name": "tiny-llama", "gradient_checkpointing": True}), tmp_path / "b")
    assert ckpt.rounds[-1]["eval_loss"] == pytest.approx(plain.rounds[-1]["eval_loss"], rel=1e-5)


def test_tiny_llama_tokenizer_is_smollm2s_bpe_cut_to_its_first_tokens():
    from transformers import AutoTokenizer

    from fedintel.models.loader import TINY_LLAMA_VOCAB

    lm = load_base_model(ModelConfig(name="tiny-llama"))
    tok, full = lm.tokenizer, AutoTokenizer.from_pretrained(sources.smollm2_dir())
    assert len(tok) == TINY_LLAMA_VOCAB == lm.model.config.vocab_size
    text = "Federated learning at the network edge: clients keep their data. Ünïcode 😀 too!"
    ids = tok(text).input_ids
    assert max(ids) < TINY_LLAMA_VOCAB and tok.decode(ids) == text  # any text still encodes, losslessly
    assert len(ids) > len(full(text).input_ids)  # into shorter pieces than SmolLM2's
    for word in [" the", " and", "ing"]:  # a kept token keeps SmolLM2's id
        assert tok.convert_tokens_to_ids(full.tokenize(word)) == full.convert_tokens_to_ids(full.tokenize(word))
    chat = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(chat, tokenize=False) == full.apply_chat_template(chat, tokenize=False)
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (full.eos_token_id, 2, full.bos_token_id)


def test_a_truncated_load_reports_no_expected_surprises_and_leaves_the_classes_as_they_were():
    """``num_layers`` leaves the checkpoint's later layers unused and a classification head is new, on purpose:
    transformers' load report (a long warning) stays quiet about those, and only those."""
    import logging

    from transformers import BertForSequenceClassification, LlamaForCausalLM

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    from transformers.utils import logging as hf_logging

    hf = logging.getLogger("transformers")
    handler = Keep(level=logging.WARNING)
    hf.addHandler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # the suite (like the CLI) runs at error: a library user gets warnings
    try:
        lm = load_base_model(ModelConfig(name="smollm2-135m", num_layers=2)).model
        clf = load_base_model(ModelConfig(name="minilm-l6", task="classification", num_labels=2, num_layers=3)).model
    finally:
        hf.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    assert not [r for r in records if "LOAD REPORT" in r], records
    assert len(lm.model.layers) == 2 and len(clf.bert.encoder.layer) == 3
    assert torch.isfinite(clf.classifier.weight).all() and float(clf.classifier.weight.std()) > 0  # initialised
    for cls in (LlamaForCausalLM, BertForSequenceClassification):  # the patterns were for those loads only
        assert "_keys_to_ignore_on_load_unexpected" not in cls.__dict__
        assert "_keys_to_ignore_on_load_missing" not in cls.__dict__
