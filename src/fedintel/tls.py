"""Certificates for fedintel's TLS links and the ``ssl`` contexts that use them.

One certificate authority per deployment (``fedintel deploy certs``) or per launch of inference devices
(:class:`fedintel.inference.protocol.LinkSecurity`); every party gets its own EC P-384 key and a
certificate signed by that CA. Written with ``cryptography``; the links use the standard library's ``ssl``.

A certificate directory holds:

- ``ca.crt`` / ``ca.key``: the CA (10 years). ``ca.key`` is needed only to issue certificates: keep it
  off the devices once they have theirs.
- ``<name>.crt`` / ``<name>.key``: the certificate and key of device ``name``, valid as TLS server *and*
  client (each inference device both serves requests and calls the next stage). Its subject alternative
  names are ``name`` itself (so a client can check it reached the device it meant) and the hosts the device
  is reached at (127.0.0.1 and localhost by default).

:func:`server_context` and :func:`client_context` build mutual-TLS contexts from such a directory: TLS 1.3
at least, the peer's certificate required and verified against ``ca.crt`` on both sides, and the server's
name checked by the client. Private keys are written with mode 0600, atomically (a reader never sees half
a key).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_DAYS = 3650
DEVICE_DAYS = 825
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class CertError(ValueError):
    """A certificate directory is missing a file, or a name cannot be a certificate name."""


def ca_paths(cert_dir: str | Path) -> tuple[Path, Path]:
    """``(ca.crt, ca.key)`` in ``cert_dir``."""
    d = Path(cert_dir)
    return d / "ca.crt", d / "ca.key"


def device_paths(cert_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(<name>.crt, <name>.key)`` in ``cert_dir``; the name is validated (letters, digits, ``_.-``)."""
    check_name(name)
    d = Path(cert_dir)
    return d / f"{name}.crt", d / f"{name}.key"


def check_name(name: str) -> str:
    """``name`` if it can name a device certificate (and its files), else :class:`CertError`."""
    if not _NAME.match(name) or name in ("ca",):
        raise CertError(f"device name {name!r}: use 1-63 letters, digits, '_', '.', '-' (not 'ca'), starting "
                        "with a letter or digit")
    return name


def _write_atomic(path: Path, data: bytes, private: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedintel"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = []
    for h in dict.fromkeys(names):  # unique, in order
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(out)


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)  # tolerate small clock skew
    return now, now + datetime.timedelta(days=days)


def write_ca(cert_dir: str | Path, days: int = CA_DAYS, common_name: str = "fedintel CA") -> tuple[Path, Path]:
    """Write a new self-signed CA (EC P-384) into ``cert_dir``; return ``(ca.crt, ca.key)``."""
    crt_path, key_path = ca_paths(cert_dir)
    crt_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(common_name)
    start, until = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_atomic(key_path, _pem_key(key), private=True)
    _write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return crt_path, key_path


def issue_cert(
    cert_dir: str | Path, common_name: str, names: Sequence[str], cert_path: Path, key_path: Path,
    server: bool = True, client: bool = True, days: int = DEVICE_DAYS,
) -> tuple[Path, Path]:
    """Sign a new key's certificate with the CA in ``cert_dir`` and write it to ``cert_path``/``key_path``.

    ``names`` are its subject alternative names (IP addresses or DNS names); ``server``/``client`` set the
    extended key usages. Raises :class:`CertError` when the CA key is not there.
    """
    ca_crt, ca_key_path = ca_paths(cert_dir)
    if not ca_crt.is_file() or not ca_key_path.is_file():
        raise CertError(f"{cert_dir} has no CA to issue a certificate for {common_name!r} with (ca.crt and ca.key "
                        "are needed); create one with `fedintel infer certs --out DIR` or `fedintel deploy certs`")
    ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{ca_key_path}: expected an EC private key")
    key = ec.generate_private_key(ec.SECP384R1())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    start, until = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(until, ca_cert.not_valid_after_utc))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(key_path, _pem_key(key), private=True)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def issue_device_cert(cert_dir: str | Path, name: str, hosts: Sequence[str] = DEFAULT_HOSTS,
                      days: int = DEVICE_DAYS) -> tuple[Path, Path]:
    """Issue device ``name``'s certificate (server and client use; SANs: ``name`` and ``hosts``)."""
    crt, key = device_paths(cert_dir, name)
    return issue_cert(cert_dir, name, [name, *hosts], crt, key, server=True, client=True, days=days)


def ensure_device_cert(cert_dir: str | Path, name: str, hosts: Sequence[str] = DEFAULT_HOSTS) -> tuple[Path, Path]:
    """Device ``name``'s certificate files, issued from the CA in ``cert_dir`` if not there yet."""
    crt, key = device_paths(cert_dir, name)
    if crt.is_file() and key.is_file():
        return crt, key
    return issue_device_cert(cert_dir, name, hosts)


def write_device_certs(out: str | Path, names: Sequence[str], hosts: Sequence[str] = DEFAULT_HOSTS) -> list[Path]:
    """A CA in ``out`` (kept if there) and a certificate for each device name, valid for ``hosts``; the files."""
    for n in names:
        check_name(n)  # before anything is written
    ca_crt, ca_key = ca_paths(out)
    if not ca_crt.is_file():
        write_ca(out)
    files = [ca_crt, ca_key]
    for n in dict.fromkeys(names):
        files += issue_device_cert(out, n, hosts)
    return files


def _check_files(cert_dir: str | Path, name: str) -> tuple[Path, Path, Path]:
    ca = ca_paths(cert_dir)[0]
    crt, key = device_paths(cert_dir, name)
    for p in (ca, crt, key):
        if not p.is_file():
            raise CertError(f"{p} is missing: issue device {name!r}'s certificate with "
                            f"`fedintel infer certs --out {cert_dir} --device {name}` (or reuse a directory that has it)")
    return ca, crt, key


def server_context(cert_dir: str | Path, name: str) -> ssl.SSLContext:
    """A server-side mutual-TLS context for device ``name``: TLS >= 1.3, client certificate required."""
    ca, crt, key = _check_files(cert_dir, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(crt), str(key))
    ctx.num_tickets = 0  # connections are long-lived; no session resumption, so no tickets to send
    return ctx


def client_context(cert_dir: str | Path, name: str) -> ssl.SSLContext:
    """A client-side mutual-TLS context for device ``name``: TLS >= 1.3, server certificate and name checked."""
    ca, crt, key = _check_files(cert_dir, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(crt), str(key))
    return ctx
