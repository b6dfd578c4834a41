import subprocess
import sys

import pytest

from fedintel.cli import main
from fedintel.config import ConfigError, load_config, parse_config


def test_defaults_validate():
    cfg = parse_config({})
    assert cfg.federation.scheme == "fedavg" and cfg.peft.method == "lora"


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"federation": {"rounds": 0}}, r"federation.rounds: Input should be greater than or equal to 1"),
        ({"peft": {"method": "adapterx"}}, r"peft.method: Input should be 'lora', 'prefix' or 'prompt'"),
        ({"federation": {"lrr": 0.1}}, r"federation.lrr: unknown key"),
        ({"bogus": 1}, r"bogus: unknown key"),
        ({"federation": {"num_clients": 2, "clients_per_round": 3}}, r"clients_per_round \(3\) exceeds"),
        ({"federation": {"batch_size": 10, "micro_batch_size": 4}}, r"batch_size \(10\) must be a multiple"),
        ({"data": {"dataset": "json"}}, r"data.data_files is required"),
        ({"data": {"eval_fraction": 1.5}}, r"data.eval_fraction"),
    ],
)
def test_errors_name_the_field(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_overrides_and_malformed_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("federation:\n  rounds: 5\n")
    assert load_config(p, ["federation.rounds=2", "peft.method=prefix"]).federation.rounds == 2
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        load_config(p, ["federation.rounds"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("federation:\n  rounds: [1,\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "g.yaml"
    good.write_text("name: x\n")
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "b.yaml"
    bad.write_text("federation:\n  rounds: -1\n")
    assert main(["validate", str(bad)]) == 2
    assert "federation.rounds" in capsys.readouterr().err


def test_every_command_has_help():
    for cmd in ([], ["run"], ["resume"], ["validate"], ["plot"], ["summary"], ["datasets"], ["models"]):
        out = subprocess.run([sys.executable, "-m", "fedintel.cli", *cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: fedintel" in out.stdout, (cmd, out.stderr[-500:])


def test_shipped_examples_validate():
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml"))
    assert examples, "examples/ must hold experiment files"
    for ex in examples:
        if ex.name.startswith("infer_"):
            continue
        load_config(ex)


def test_async_wall_clock_needs_the_flower_engine(tmp_path):
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match="async.clock: wall .* engine: flower"):
        tiny_config(tmp_path, federation={"scheme": "async"}, **{"async": {"clock": "wall"}})
    with pytest.raises(ConfigError, match="async.clock: wall applies to federation.scheme async"):
        tiny_config(tmp_path, engine="flower", **{"async": {"clock": "wall"}})
    with pytest.raises(ConfigError, match="async.clock"):
        tiny_config(tmp_path, federation={"scheme": "async"}, **{"async": {"clock": "sundial"}})
    cfg = tiny_config(tmp_path, engine="flower", federation={"scheme": "async"}, network={"enabled": False},
                      **{"async": {"clock": "wall"}})
    assert cfg.asynchronous.clock == "wall"
