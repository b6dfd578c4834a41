"""The runtime section: device, precision and threads; bf16/fp16 runs; device-independent checkpoints."""

import math

import pytest
import torch

from fedintel.config import ConfigError, parse_config
from fedintel.experiment import resume_experiment, run_experiment
from fedintel.runtime import Runtime, resolve_device, resolve_runtime
from fedintel.tracking.checkpoint import latest_checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


def test_runtime_defaults_and_legacy_threads_key():
    cfg = parse_config({})
    assert (cfg.runtime.device, cfg.runtime.dtype, cfg.runtime.threads) == ("auto", "float32", None)
    old = parse_config({"threads": 3})  # the key moved into runtime; old files keep working
    assert old.runtime.threads == 3
    with pytest.raises(ConfigError, match="runtime.threads"):
        parse_config({"threads": 3, "runtime": {"threads": 2}})


@pytest.mark.parametrize("raw, field", [
    ({"runtime": {"device": "gpu"}}, "runtime.device"),
    ({"runtime": {"device": "cuda:x"}}, "runtime.device"),
    ({"runtime": {"dtype": "fp8"}}, "runtime.dtype"),
    ({"runtime": {"threads": 0}}, "runtime.threads"),
    ({"model": {"quantization": "3bit"}}, "model.quantization"),
])
def test_bad_runtime_values_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(raw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_is_one_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"runtime\.device: cuda.*no CUDA device.*runtime\.device: cpu"):
        resolve_device("cuda")
    cfg = tiny_cfg(runtime={"device": "cuda:0"})
    with pytest.raises(ConfigError, match="runtime.device"):
        run_experiment(cfg, tmp_path / "nope")
    assert not (tmp_path / "nope").exists(), "a refused run must write nothing"


def test_auto_picks_the_cpu_without_an_accelerator():
    rt = resolve_runtime(parse_config({"runtime": {"device": "auto", "dtype": "bfloat16"}}).runtime, apply_threads=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rt.device.type in (expected, "mps") and rt.dtype == torch.bfloat16 and rt.mixed


def test_bf16_base_keeps_fp32_master_weights(tiny_cfg, tmp_path):
    from fedintel.world import build_world

    world = build_world(tiny_cfg(runtime={"device": "cpu", "dtype": "bfloat16"}))
    frozen = {p.dtype for p in world.peft_model.parameters() if not p.requires_grad and p.is_floating_point()}
    trainable = {p.dtype for p in world.peft_model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    state = world.slot.get()
    assert {t.dtype for t in state.values()} == {torch.float32} and {t.device.type for t in state.values()} == {"cpu"}


def test_bf16_run_learns_and_stays_close_to_fp32(tiny_cfg, tmp_path):
    fp32 = run_experiment(tiny_cfg(runtime={"device": "cpu"}, federation={"rounds": 3}), tmp_path / "fp32")
    bf16 = run_experiment(tiny_cfg(runtime={"device": "cpu", "dtype": "bfloat16"}, federation={"rounds": 3}),
                          tmp_path / "bf16")
    losses = [r["eval_loss"] for r in bf16.rounds]
    assert losses[-1] < losses[0] - 0.02, losses
    assert losses != [r["eval_loss"] for r in fp32.rounds], "bf16 must really compute in bf16"
    assert abs(losses[-1] - fp32.rounds[-1]["eval_loss"]) / fp32.rounds[-1]["eval_loss"] < 0.02


def test_fp16_run_uses_a_grad_scaler_and_learns(tiny_cfg, tmp_path):
    rt = Runtime(torch.device("cpu"), torch.float16)
    assert rt.grad_scaler().is_enabled() and not Runtime(torch.device("cpu"), torch.bfloat16).grad_scaler().is_enabled()
    res = run_experiment(tiny_cfg(runtime={"device": "cpu", "dtype": "float16"}), tmp_path / "fp16")
    losses = [r["eval_loss"] for r in res.rounds]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_bf16_run_resumes_to_the_same_result(tiny_cfg, tmp_path):
    cfg = tiny_cfg(runtime={"device": "cpu", "dtype": "bfloat16"}, federation={"rounds": 3})
    full = run_experiment(cfg, tmp_path / "full")
    run_experiment(cfg, tmp_path / "part", stop_after_round=1)
    resumed = resume_experiment(tmp_path / "part")
    assert [r["eval_loss"] for r in resumed.rounds] == [r["eval_loss"] for r in full.rounds]
    ckpt = latest_checkpoint(tmp_path / "part")
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ckpt["state"]["global"].values())


def test_resume_may_change_only_runtime_settings(tiny_cfg, tmp_path):
    cfg = tiny_cfg(runtime={"device": "cpu"}, federation={"rounds": 2})
    run_experiment(cfg, tmp_path / "part", stop_after_round=1)
    with pytest.raises(ConfigError, match="only runtime"):
        resume_experiment(tmp_path / "part", runtime_overrides=["federation.rounds=5"])
    # moving to another precision mid-run continues from the float32 checkpoint within dtype tolerance
    full = run_experiment(cfg, tmp_path / "full")
    moved = resume_experiment(tmp_path / "part", runtime_overrides=["runtime.dtype=bfloat16"])
    assert moved.rounds[1]["eval_loss"] == full.rounds[1]["eval_loss"]  # before the move: untouched
    assert moved.rounds[-1]["eval_loss"] == pytest.approx(full.rounds[-1]["eval_loss"], rel=0.01)


@needs_cuda
def test_cuda_run_matches_cpu_and_resumes_on_cpu(tiny_cfg, tmp_path):
    cfg = tiny_cfg(runtime={"device": "cuda"}, federation={"rounds": 3})
    gpu = run_experiment(cfg, tmp_path / "gpu")
    cpu = run_experiment(tiny_cfg(runtime={"device": "cpu"}, federation={"rounds": 3}), tmp_path / "cpu")
    assert gpu.rounds[-1]["eval_loss"] == pytest.approx(cpu.rounds[-1]["eval_loss"], rel=1e-3)
    run_experiment(cfg, tmp_path / "part", stop_after_round=1)
    moved = resume_experiment(tmp_path / "part", runtime_overrides=["runtime.device=cpu"])
    assert moved.rounds[-1]["eval_loss"] == pytest.approx(gpu.rounds[-1]["eval_loss"], rel=1e-3)


@needs_cuda
def test_bf16_on_cuda_learns(tiny_cfg, tmp_path):
    res = run_experiment(tiny_cfg(runtime={"device": "cuda", "dtype": "bfloat16"}), tmp_path / "run")
    assert res.rounds[-1]["eval_loss"] < res.rounds[0]["eval_loss"]


def test_paper_scale_file_holds_the_papers_settings_and_smoke_runs_on_smollm2(tmp_path):
    from pathlib import Path

    from fedintel.config import load_config

    path = Path(__file__).resolve().parents[2] / "examples" / "paper_scale.yaml"
    cfg = load_config(path)
    f, d, n = cfg.federation, cfg.data, cfg.network
    assert (f.num_clients, d.samples_per_client, f.batch_size, f.lr, d.max_length) == (8, 1600, 80, 2e-4, 128)
    assert (n.cell_radius_m, n.bandwidth_hz, n.tx_power_dbm, n.noise_dbm) == (100, 20e6, 23, -80)
    assert cfg.runtime.dtype == "bfloat16" and d.dataset == "hf:Open-Orca/OpenOrca" and "/" in cfg.model.name
    # the README's offline smoke test of the same file (plus two layers, to keep the test short)
    smoke = ["model.name=smollm2-135m", "data.dataset=chatterbot", "data.prompt_field=prompt",
             "data.response_field=response", "data.system_field=null", "data.samples_per_client=16",
             "federation.batch_size=8", "federation.rounds=1", "eval.max_samples=8",
             "model.num_layers=2", "federation.num_clients=2", "federation.clients_per_round=2",
             "data.max_length=32", f"output.dir={tmp_path}", "runtime.device=cpu"]
    res = run_experiment(load_config(path, smoke))
    assert res.status == "finished" and math.isfinite(res.rounds[-1]["eval_loss"])
