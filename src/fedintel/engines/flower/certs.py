"""TLS certificates and SuperNode keys for a Flower deployment (the CA tooling is :mod:`fedintel.tls`).

``write_certs(out, hosts, nodes)`` produces, in ``out``:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority (EC P-384, 10 years). Give ``ca.crt`` to every
  SuperNode and to ``flwr`` (``--root-certificates`` / ``root-certificates``); keep ``ca.key`` offline.
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for ``hosts``
  (IP addresses and DNS names the nodes use to reach it; 127.0.0.1 and localhost by default).
- ``node_<i>.key`` / ``node_<i>.pub``: one EC P-384 key pair per SuperNode in OpenSSH format, as Flower's
  node authentication expects. Register the public key with ``flwr supernode register node_<i>.pub`` (or
  ``fedintel deploy register``); start the node with ``--auth-supernode-private-key node_<i>.key``.

Private keys are written with mode 0600.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedintel.tls import DEFAULT_HOSTS, issue_cert, write_ca

__all__ = ["DEFAULT_HOSTS", "CertPaths", "write_certs", "write_node_key"]


@dataclass(frozen=True)
class CertPaths:
    """Where :func:`write_certs` put each file."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def node_key(self, i: int) -> Path:
        """The private key of SuperNode ``i`` (OpenSSH format)."""
        return self.root / f"node_{i}.key"

    def node_pub(self, i: int) -> Path:
        """The public key of SuperNode ``i`` (OpenSSH format), to register with the SuperLink."""
        return self.root / f"node_{i}.pub"

    def check(self) -> None:
        """Raise ``FileNotFoundError`` naming the first missing file of the TLS set."""
        for p in (self.ca_cert, self.server_cert, self.server_key):
            if not p.is_file():
                raise FileNotFoundError(f"{p} is missing; create the certificates with `fedintel deploy certs --out {self.root}`")


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def write_certs(out: str | Path, hosts: Sequence[str] = DEFAULT_HOSTS, nodes: int = 0, days: int = 3650) -> CertPaths:
    """Write a CA, a SuperLink certificate for ``hosts`` and ``nodes`` SuperNode key pairs into ``out``."""
    paths = CertPaths(Path(out))
    write_ca(paths.root, days=days)
    issue_cert(paths.root, hosts[0] if hosts else "superlink", hosts, paths.server_cert, paths.server_key,
               server=True, client=False, days=days)
    for i in range(nodes):
        write_node_key(paths, i)
    return paths


def write_node_key(paths: CertPaths, i: int) -> tuple[Path, Path]:
    """Write SuperNode ``i``'s EC P-384 key pair (OpenSSH format); return ``(private, public)`` paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(paths.node_key(i), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    paths.node_pub(i).write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return paths.node_key(i), paths.node_pub(i)
