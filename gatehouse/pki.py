"""Development PKI: a local CA, a TLS server certificate and device certificates.

``gatehouse init`` must give the MQTT and HTTP listeners working TLS out of the
box, and ``gatehouse pki issue`` must hand out device certificates for X.509
credentials, without asking operators to drive openssl.  Everything here is
built with ``cryptography``; production fleets are expected to bring their own
CA and only use the lower-level helpers (e.g. for X.509-chain profiles).

Files are never overwritten: keys are created 0600 with ``O_EXCL`` so a rerun,
a race or a typo cannot silently replace a CA that devices already trust.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes as PrivateKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatehouse.certificates import parse_certificate

__all__ = [
    "DEVELOPMENT_CA_NAME",
    "DevelopmentPki",
    "PkiError",
    "PrivateKey",
    "certificate_pem",
    "create_ca",
    "create_self_signed",
    "ensure_development_pki",
    "generate_private_key",
    "issue_certificate",
    "issue_device_certificate",
    "private_key_pem",
    "write_private_file",
]

DEVELOPMENT_CA_NAME = "Gatehouse Development CA"
SERVER_COMMON_NAME = "Gatehouse Development Server"
# Backdating lets devices whose clocks run a little behind accept fresh certificates.
CLOCK_SKEW = timedelta(minutes=5)
_MAX_COMMON_NAME = 64  # RFC 5280 ub-common-name


class PkiError(Exception):
    """The PKI cannot be created or used as asked; the message tells the operator why."""


@dataclass(frozen=True)
class DevelopmentPki:
    directory: Path
    ca_cert: Path  # clients trust this
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path | str) -> DevelopmentPki:
        """The file layout inside ``directory``; nothing is read or created."""
        d = Path(directory)
        return cls(d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key")


def ensure_development_pki(directory: Path, *, hostnames: Iterable[str] = ()) -> DevelopmentPki:
    """Create whatever part of the development PKI is missing in ``directory``.

    The server certificate covers localhost, 127.0.0.1, ::1, this machine's
    hostname and ``hostnames``.  Existing files are never touched, so a second
    call is a no-op.
    """
    pki = DevelopmentPki.in_directory(directory)
    # Check both pairs before writing anything so a refusal leaves no new files.
    ca_present = _pair_present(pki.ca_cert, pki.ca_key)
    server_present = _pair_present(pki.server_cert, pki.server_key)
    if server_present and not ca_present:
        # A new CA could not vouch for the existing server certificate.
        raise PkiError(
            f"{pki.server_cert} exists but its CA {pki.ca_cert.name} does not; "
            "remove server.pem and server.key to regenerate them"
        )
    pki.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = None
    if not ca_present:
        ca = create_ca(DEVELOPMENT_CA_NAME)
        _write_key_and_cert(pki.ca_cert, pki.ca_key, *ca)
    if not server_present:
        ca_cert, ca_key = ca or _load_ca(pki)
        names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hostnames]
        unique_names = list(dict.fromkeys(n for n in names if n))
        server = issue_certificate(
            ca_cert, ca_key, SERVER_COMMON_NAME, client=False, server_names=unique_names
        )
        _write_key_and_cert(pki.server_cert, pki.server_key, *server)
    return pki


def issue_device_certificate(
    pki: DevelopmentPki, name: str, out_dir: Path, *, days: int = 365
) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.pem`` and ``NAME.key`` (0600): a client certificate with CN=name."""
    _check_device_name(name)
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(f"refusing to overwrite {path}")
    ca_cert, ca_key = _load_ca(pki)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_key_and_cert(cert_path, key_path, *issue_certificate(ca_cert, ca_key, name, days=days))
    return cert_path, key_path


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """P-256: small, fast, and supported by every TLS stack devices ship with."""
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(
    common_name: str, *, key: PrivateKey | None = None, days: int = 3650
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root that may sign leaf certificates only (path_length=0)."""
    key = key if key is not None else generate_private_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), days, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _signature_hash(key))
    )
    return cert, key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    *,
    key: PrivateKey | None = None,
    days: int = 365,
    client: bool = True,
    server_names: Iterable[str] = (),
    not_before: datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf signed by ``ca_cert``: clientAuth if ``client``, serverAuth + SANs if ``server_names``.

    Valid for ``days`` from ``not_before`` (default: a few minutes ago).
    """
    key = key if key is not None else generate_private_key()
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        authority_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    cert = _leaf_builder(
        common_name, key, ca_cert.subject, authority_id, days, client, server_names, not_before
    ).sign(ca_key, _signature_hash(ca_key))
    return cert, key


def create_self_signed(common_name: str, *, days: int = 365) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed client certificate, as devices without a CA present."""
    key = generate_private_key()
    authority_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    builder = _leaf_builder(common_name, key, _name(common_name), authority_id, days, True, (), None)
    return builder.sign(key, _signature_hash(key)), key


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def private_key_pem(key: PrivateKey) -> str:
    """Unencrypted PKCS#8: the services load keys unattended, so file mode is the protection."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def write_private_file(path: Path, data: str | bytes) -> None:
    """Create ``path`` with mode 0600 from the start; raises FileExistsError if it exists."""
    _write_new(path, data, 0o600)


def _write_new(path: Path, data: str | bytes, mode: int) -> None:
    # O_EXCL: never replace an existing file; the mode applies at creation, so
    # there is no window in which a key is readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode("ascii") if isinstance(data, str) else data)


def _write_key_and_cert(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: PrivateKey
) -> None:
    write_private_file(key_path, private_key_pem(key))
    _write_new(cert_path, certificate_pem(cert), 0o644)


def _pair_present(cert_path: Path, key_path: Path) -> bool:
    cert_exists, key_exists = cert_path.exists(), key_path.exists()
    if cert_exists != key_exists:
        present, missing = (cert_path, key_path) if cert_exists else (key_path, cert_path)
        raise PkiError(
            f"{present} exists without {missing.name}; restore it or remove both to regenerate"
        )
    return cert_exists


def _load_ca(pki: DevelopmentPki) -> tuple[x509.Certificate, PrivateKey]:
    try:
        cert = parse_certificate(pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(
            f"no development CA in {pki.directory} ({exc.filename} missing); run `gatehouse init`"
        ) from None
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load development CA from {pki.directory}: {exc}") from None
    # A mismatched pair would issue certificates that nothing verifies.
    if key.public_key() != cert.public_key():
        raise PkiError(f"{pki.ca_key} does not belong to {pki.ca_cert}")
    return cert, key


def _check_device_name(name: str) -> None:
    # The name becomes a file name and a CN: keep it inside out_dir and printable.
    if not name.strip():
        raise PkiError("device name must not be empty")
    if "/" in name or "\\" in name:
        raise PkiError(f"device name {name!r} must not contain path separators")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise PkiError(f"device name {name!r} must not contain control characters")
    # cryptography enforces the CN limit on UTF-8 bytes, not characters.
    if len(name.encode("utf-8")) > _MAX_COMMON_NAME:
        raise PkiError(
            f"device name must be at most {_MAX_COMMON_NAME} bytes in UTF-8 (X.509 CN limit)"
        )


def _leaf_builder(
    common_name: str,
    key: PrivateKey,
    issuer: x509.Name,
    authority_id: x509.AuthorityKeyIdentifier,
    days: int,
    client: bool,
    server_names: Iterable[str],
    not_before: datetime | None,
) -> x509.CertificateBuilder:
    server_names = list(server_names)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        _builder(_name(common_name), issuer, key.public_key(), days, not_before)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RSA keys may still meet TLS 1.2 RSA key exchange, which needs keyEncipherment.
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_id, critical=False)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    return builder


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, days: int, not_before: datetime | None
) -> x509.CertificateBuilder:
    start = not_before if not_before is not None else datetime.now(timezone.utc) - CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )
    return x509.KeyUsage(**{**flags, **enabled})


def _general_name(name: str) -> x509.GeneralName:
    # IP literals must be iPAddress SANs: TLS clients never match an IP against a DNSName.
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    # EdDSA hashes internally and cryptography requires None for it.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()
