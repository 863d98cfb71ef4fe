"""Parsing and checks of X.509 certificates as devices present them.

Devices and the ThingsBoard API hand us certificates in several shapes: PEM
text (sometimes a whole chain), the bare single-line Base64 DER body that
ThingsBoard stores as an X509 ``credentialsValue``, or raw DER from a TLS
handshake.  This module normalises all of them to ``x509.Certificate`` and
offers the few checks credential matching needs.  It does no I/O so that the
broker plugin, the HTTP API and the CLI can share it.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = [
    "CertificateError",
    "base64_body",
    "common_name",
    "der_bytes",
    "is_ca_certificate",
    "is_issued_by",
    "is_within_validity",
    "parse_certificate",
    "split_pem_certificates",
]

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL
)


class CertificateError(ValueError):
    """A certificate could not be parsed; the message is one line, fit for users."""


def parse_certificate(data: str | bytes) -> x509.Certificate:
    """Parse PEM (first certificate block), Base64 DER (one line or wrapped) or DER bytes."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw.strip():
        raise CertificateError("Invalid certificate: empty input")
    if b"-----BEGIN" in raw:
        # latin-1 maps every byte, so odd bytes outside the armour cannot break decoding.
        first = split_pem_certificates(raw.decode("latin-1"))[0]
        try:
            return x509.load_pem_x509_certificate(first.encode("latin-1"))
        except ValueError:
            raise CertificateError("Invalid certificate: malformed PEM block") from None
    # Text can never be raw DER, so only bytes are tried verbatim.
    candidates = [] if isinstance(data, str) else [raw]
    try:
        candidates.append(base64.b64decode(b"".join(raw.split()), validate=True))
    except binascii.Error:
        pass
    for der in candidates:
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError:
            continue
    raise CertificateError("Invalid certificate: not PEM, Base64 DER or DER")


def split_pem_certificates(text: str) -> list[str]:
    """Return every ``CERTIFICATE`` PEM block of ``text`` in order (other blocks are skipped)."""
    blocks = _PEM_CERTIFICATE.findall(text)
    if not blocks:
        raise CertificateError("Invalid certificate: no PEM CERTIFICATE block found")
    return blocks


def der_bytes(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def base64_body(cert_or_der: x509.Certificate | bytes) -> str:
    """Standard padded Base64 of the DER on one line: ThingsBoard's X509 ``credentialsValue``."""
    der = der_bytes(cert_or_der) if isinstance(cert_or_der, x509.Certificate) else bytes(cert_or_der)
    return base64.b64encode(der).decode("ascii")


def common_name(cert: x509.Certificate) -> str | None:
    """Value of the first CN in the subject; later CNs are ignored, as TLS stacks do."""
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value.decode("utf-8") if isinstance(value, bytes) else value


def is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``issuer``'s name matches and its key verifies ``cert``'s signature.

    A name match alone is worthless: anyone can mint a CA with the same subject.
    """
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        # ValueError: name mismatch or unsupported signature algorithm;
        # TypeError: issuer key type that cannot sign certificates.
        return False
    return True


def is_within_validity(cert: x509.Certificate, now: datetime | None = None) -> bool:
    """True if ``now`` (default: current time) lies inside the validity window, bounds included.

    A naive ``now`` is taken as UTC, matching how certificates store time.
    """
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """True if BasicConstraints says ``ca=True``; a missing extension means not a CA."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
