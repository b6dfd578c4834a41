"""TLS certificates and SuperNode keys for a Flower deployment, written with ``cryptography``.

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

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedintel"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def write_certs(out: str | Path, hosts: Sequence[str] = DEFAULT_HOSTS, nodes: int = 0, days: int = 3650) -> CertPaths:
    """Write a CA, a SuperLink certificate for ``hosts`` and ``nodes`` SuperNode key pairs into ``out``."""
    paths = CertPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedintel CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(paths.ca_key, ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "superlink"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(paths.server_key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

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
