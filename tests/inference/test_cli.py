"""`fedintel infer`: every mode has --help; configs are validated; a split run exits cleanly."""

from __future__ import annotations

import argparse
import ipaddress

import pytest
from cryptography import x509

from fedintel.inference.cli import MODES, add_infer_parser, main
from fedintel.inference.config import InferConfigError, load_infer_config
from fedintel.processes import child_pids


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedintel")
    add_infer_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_has_help(mode, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["infer", mode, "--help"])
    assert e.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_examples_validate():
    for name in ("split", "vertical", "multiaccess"):
        cfg = load_infer_config(f"examples/infer_{name}.yaml")
        assert cfg.model == "smollm2-135m"


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [{name: a, flops_per_s: 1e9}, {name: b, flops_per_s: 1e9}]\nlinks: []\n")
    with pytest.raises(InferConfigError, match="links: 0 links given for 2 devices"):
        load_infer_config(bad)
    bad.write_text("modle: x\n")
    with pytest.raises(InferConfigError, match="modle: unknown key"):
        load_infer_config(bad)
    bad.write_text("paths: [{name: a, availability: 1.5}]\n")
    with pytest.raises(InferConfigError, match="paths.0.availability"):
        load_infer_config(bad)


def test_split_mode_runs_and_leaves_no_process(tmp_path, capsys):
    cfg = tmp_path / "split.yaml"
    cfg.write_text(
        "model: tiny-llama\nmax_new_tokens: 4\nprompt: hello\ncuts: []\n"
        "devices: [{name: a, flops_per_s: 1.0e9}, {name: b, flops_per_s: 1.0e9}]\n"
        "links: [{rate_bps: 1.0e8, latency_s: 0.001}]\n"
    )
    assert main(["infer", "split", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "identical output" in out and "True" in out
    assert child_pids(command="fedintel") == []
    assert main(["infer", "split", "-c", str(cfg), "--stages", "127.0.0.1:1"]) == 2
    assert "stages: running devices are reached over mutual TLS: pass --certs DIR" in capsys.readouterr().out
    assert main(["infer", "certs", "--out", str(tmp_path / "certs")]) == 0
    assert main(["infer", "split", "-c", str(cfg), "--stages", "127.0.0.1:1", "--certs", str(tmp_path / "certs")]) == 2
    assert "unreachable" in capsys.readouterr().out
    assert main(["infer", "split", "-c", str(cfg), "--stages", "10.1.2.3:7000", "--insecure"]) == 2
    assert "plaintext links are for loopback only" in capsys.readouterr().out
    assert main(["infer", "plan", "--model", "tiny-llama", "--cuts", "5"]) == 2


def test_certs_command_issues_device_certificates_for_given_hosts(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["infer", "certs", "--out", str(out), "--device", "stage0", "--host", "10.0.0.5"]) == 0
    assert str(out / "stage0.key") in capsys.readouterr().out
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    crt = x509.load_pem_x509_certificate((out / "stage0.crt").read_bytes())
    crt.verify_directly_issued_by(ca)
    san = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["stage0"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert (out / "stage0.key").stat().st_mode & 0o077 == 0 and (out / "ca.key").stat().st_mode & 0o077 == 0
    before = (out / "ca.crt").read_bytes()
    assert main(["infer", "certs", "--out", str(out), "--device", "stage1"]) == 0  # the CA is kept
    assert (out / "ca.crt").read_bytes() == before and (out / "stage1.crt").is_file()
    assert main(["infer", "certs", "--out", str(out), "--device", "../evil"]) == 2
    assert "device name '../evil'" in capsys.readouterr().err
