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
        ({"peft": {"method": "adapterx"}}, r"peft.method: unknown PEFT method 'adapterx'; choose from \['lora', 'prefix', 'prompt'\]"),
        ({"federation": {"lrr": 0.1}}, r"federation.lrr: unknown key"),
        ({"bogus": 1}, r"bogus: unknown key"),
        ({"federation": {"num_clients": 2, "clients_per_round": 3}}, r"clients_per_round \(3\) exceeds"),
        ({"federation": {"batch_size": 10, "micro_batch_size": 4}}, r"batch_size \(10\) must be a multiple"),
        ({"data": {"dataset": "json"}}, r"data.data_files is required"),
        ({"data": {"eval_fraction": 1.5}}, r"data.eval_fraction"),
        ({"data": {"partition": {"method": "iid", "draw": "per_class"}}}, r"data.partition.draw: only method=dirichlet"),
        ({"data": {"partition": {"method": "dirichlet", "draw": "per_label"}}}, r"data.partition.draw"),
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
    from fedintel.inference.config import load_infer_config
    from fedintel.serving.config import load_serve_config

    for ex in examples:
        if ex.name.startswith("infer_"):
            load_infer_config(ex)
        elif ex.name.startswith("serve"):
            load_serve_config(ex)
        else:
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


@pytest.mark.parametrize(
    "raw, fields",
    [
        ({"privacy": {"secure_aggregation": True}, "aggregation": {"rule": "median"}},
         ("privacy.secure_aggregation", "aggregation.rule median")),
        ({"privacy": {"secure_aggregation": True}, "aggregation": {"rule": "krum"}},
         ("privacy.secure_aggregation", "aggregation.rule krum")),
        ({"privacy": {"secure_aggregation": True}, "aggregation": {"rule": "ota"}},
         ("privacy.secure_aggregation", "aggregation.rule ota")),
        ({"privacy": {"secure_aggregation": True}, "aggregation": {"lora": "exact"}},
         ("privacy.secure_aggregation", "aggregation.lora: exact")),
        ({"aggregation": {"lora": "exact", "rule": "median"}}, ("aggregation.lora: exact", "aggregation.rule median")),
        ({"privacy": {"dp": "central", "noise_multiplier": 1.0}, "aggregation": {"lora": "exact"}},
         ("privacy.dp: central", "aggregation.lora: exact")),
        ({"federation": {"scheme": "async"}, "network": {"enabled": True},
          "privacy": {"dp": "central", "noise_multiplier": 1.0}}, ("async.mode: fedasync", "privacy.dp: central")),
        ({"federation": {"scheme": "async"}, "network": {"enabled": True}, "privacy": {"secure_aggregation": True}},
         ("async.mode: fedasync", "privacy.secure_aggregation")),
        ({"federation": {"scheme": "async"}, "network": {"enabled": True}, "aggregation": {"rule": "median"}},
         ("async.mode: fedasync", "aggregation.rule median")),
        ({"model": {"name": "minilm-l6", "task": "classification"},
          "peft": {"method": "prefix", "prefix_init_text": "a movie review"}},
         ("peft.prefix_init_text", "model.task causal_lm")),
    ],
)
def test_settings_that_would_be_dropped_are_refused_naming_both(raw, fields, tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        parse_config(dict(raw))
    msg = str(err.value)
    assert all(f in msg for f in fields) and "\n" not in msg, msg
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2  # `fedintel run` loads the file through the same validation
    assert fields[0] in capsys.readouterr().err
    assert main(["run", str(path)]) == 2


def test_supported_combinations_validate():
    parse_config({"privacy": {"secure_aggregation": True, "dp": "central", "noise_multiplier": 1.0}})
    parse_config({"privacy": {"dp": "local", "noise_multiplier": 1.0}, "aggregation": {"lora": "exact"}})
    parse_config({"privacy": {"dp": "central", "noise_multiplier": 1.0}, "aggregation": {"weighted": False}})
    parse_config({"federation": {"scheme": "async"}, "network": {"enabled": True}, "async": {"mode": "fedbuff"},
                  "privacy": {"dp": "central", "noise_multiplier": 1.0, "secure_aggregation": True}})


def test_serve_limits_name_the_bad_field(tmp_path):
    from fedintel.serving.config import ServeConfigError, load_serve_config

    for field, value in (("prefix_cache", -1), ("max_batch", 0)):
        p = tmp_path / f"{field}.yaml"
        p.write_text(f"limits: {{{field}: {value}}}\n")
        with pytest.raises(ServeConfigError, match=f"limits.{field}"):
            load_serve_config(p)
    assert load_serve_config(None, {"limits": {"prefix_cache": 0}}).limits.prefix_cache == 0


def test_serve_pack_weights_is_checked_by_name_and_against_the_device(tmp_path):
    from fedintel.serving.config import ServeConfigError, load_serve_config
    from fedintel.serving.service import Service

    p = tmp_path / "pack.yaml"
    p.write_text("pack_weights: always\n")
    with pytest.raises(ServeConfigError, match="pack_weights"):
        load_serve_config(p)
    assert load_serve_config(None).pack_weights == "auto"
    # "on" where packing cannot run is refused before any device process starts
    cfg = load_serve_config(None, {"pack_weights": "on", "runtime": {"device": "cpu", "dtype": "float16"},
                                   "model": {"name": "tiny-llama"}, "insecure": True})
    with pytest.raises(ServeConfigError, match="pack_weights: on cannot be served: .*float16"):
        Service(cfg)


def test_serve_routing_method_is_checked_by_name():
    from fedintel.serving.config import ServeConfigError, load_serve_config

    assert load_serve_config(None).routing.method == "auto"
    with pytest.raises(ServeConfigError, match="routing.method"):
        load_serve_config(None, {"routing": {"method": "nearest"}})
    with pytest.raises(ServeConfigError, match="routing.method: examples needs routing.examples"):
        load_serve_config(None, {"routing": {"method": "examples"}})
    # examples that the chosen method would not use are refused, not dropped
    with pytest.raises(ServeConfigError, match="routing.examples: given, but routing.method is loss"):
        load_serve_config(None, {"routing": {"method": "loss", "examples": {"a": ["x"]}}})
    with pytest.raises(ServeConfigError, match="routing.method: clients .* set from_run"):
        load_serve_config(None, {"routing": {"method": "clients"}})
    cfg = load_serve_config(None, {"routing": {"method": "clients"}, "from_run": "runs/x"})
    assert load_serve_config(None, cfg.model_dump()).routing.method == "clients"  # round-trips
    # the command line's --routing is validated like the file's value, before any process starts
    from fedintel.cli import main as cli_main

    assert cli_main(["serve", "--routing", "clients"]) == 2


def test_infer_pack_weights_is_checked_by_name_and_reaches_the_devices():
    from fedintel.inference.config import InferConfig
    from fedintel.inference.modes.common import runtime_args

    assert runtime_args(InferConfig())[-2:] == ["--pack-weights", "auto"]
    assert runtime_args(InferConfig(pack_weights="off"))[-2:] == ["--pack-weights", "off"]
    with pytest.raises(ValueError, match="pack_weights"):
        InferConfig(pack_weights="always")
    with pytest.raises(ValueError, match="pack_weights: on cannot run with device cuda"):
        InferConfig(pack_weights="on", device="cuda")
    with pytest.raises(ValueError, match="pack_weights: on cannot run .* float16"):
        InferConfig(pack_weights="on", dtype="float16")
