"""``fedintel deploy ...``: every sub-command has help; certs and shards are right; the documented manual
commands (superlink, register, supernode) bring a node into a TLS + auth federation."""

from __future__ import annotations

import ipaddress
import json
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedintel.cli import build_parser, main
from fedintel.config import dump_config
from fedintel.engines.flower.deploy import flower_env
from fedintel.processes import free_port, pids_with_env, start_process, wait_for_port
from tests.engines.flower_helpers import experiment, wait_for_log

SUBCOMMANDS = ["certs", "partition", "superlink", "register", "supernode", "run", "local"]


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_every_deploy_command_has_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["deploy", "--help"] if sub is None else ["deploy", sub, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fedintel deploy" in out
    if sub is None:
        assert all(s in out for s in SUBCOMMANDS)


def test_certs_form_a_chain_and_node_keys_fit_flower(tmp_path):
    assert main(["deploy", "certs", "--out", str(tmp_path), "--nodes", "2", "--host", "127.0.0.1", "--host", "edge.local"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "edge.local" in san.get_values_for_type(x509.DNSName)
    for i in range(2):
        key = load_ssh_private_key((tmp_path / f"node_{i}.key").read_bytes(), None)
        pub = load_ssh_public_key((tmp_path / f"node_{i}.pub").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
        assert key.public_key().public_numbers() == pub.public_numbers()
        assert (tmp_path / f"node_{i}.key").stat().st_mode & 0o077 == 0


def test_partition_writes_one_private_shard_per_client(tmp_path):
    cfg = experiment(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text(dump_config(cfg))
    assert main(["deploy", "partition", str(path), "--out", str(tmp_path / "shards")]) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["num_clients"] == 3 and set(manifest["clients"]) == {"0", "1", "2"}
    for c in range(3):
        rows = [json.loads(line) for line in (tmp_path / "shards" / f"client_{c}.jsonl").read_text().splitlines()]
        assert sum(r["split"] == "train" for r in rows) == manifest["clients"][str(c)]["train"]
        assert all(set(r) >= {"text", "domain", "split"} for r in rows)


def test_documented_commands_bring_a_registered_node_into_a_tls_federation(tmp_path):
    """fedintel deploy certs / superlink / register / supernode --warm, as the README shows them."""
    fedintel = [sys.executable, "-m", "fedintel.cli", "deploy"]
    certs = tmp_path / "certs"
    assert main(["deploy", "certs", "--out", str(certs), "--nodes", "1"]) == 0
    cfg = experiment(tmp_path)
    (tmp_path / "exp.yaml").write_text(dump_config(cfg))
    assert main(["deploy", "partition", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "shards")]) == 0
    port = free_port()
    env = flower_env(tmp_path / "env")
    marker = f"FLWR_HOME={tmp_path}/"
    procs = []
    try:
        link = start_process("superlink", fedintel + ["superlink", "--certs", str(certs), "--port", str(port),
                                                     "--home", str(tmp_path / "link")], env, tmp_path / "link.log")
        procs.append(link)
        wait_for_port("127.0.0.1", port, 60, link)
        assert main(["deploy", "register", str(certs / "node_0.pub"), "--superlink", f"127.0.0.1:{port}",
                     "--certs", str(certs), "--home", str(tmp_path / "cli")]) == 0
        node = start_process("node", fedintel + [
            "supernode", "--superlink", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "shards"), "--client-ids", "0",
            "--certs", str(certs), "--key", str(certs / "node_0.key"), "--port", str(free_port()), "--warm",
            "--home", str(tmp_path / "node")], env, tmp_path / "node.log")
        procs.append(node)
        assert wait_for_log(tmp_path / "node.log", "SuperNode ID:", 90), node.tail()
        assert wait_for_log(tmp_path / "node.log", "waiting for tasks", 90), node.tail()
        assert "--enable-supernode-auth" in (tmp_path / "link.log").read_text()
    finally:
        for p in reversed(procs):
            p.stop()
    assert pids_with_env(marker) == []
