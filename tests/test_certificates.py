"""Tests for gatehouse.certificates: parsing device certificates and the trust checks."""

from __future__ import annotations

import base64
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from gatehouse.certificates import (
    CertificateError,
    base64_body,
    common_name,
    der_bytes,
    is_ca_certificate,
    is_issued_by,
    is_within_validity,
    parse_certificate,
    split_pem_certificates,
)
from gatehouse.pki import certificate_pem, create_ca, create_self_signed, issue_certificate


@pytest.fixture(scope="module")
def ca():
    return create_ca("Test CA")


@pytest.fixture(scope="module")
def device(ca):
    cert, _ = issue_certificate(*ca, "device-1")
    return cert


@pytest.fixture(scope="module")
def other():
    cert, _ = create_self_signed("other-device")
    return cert


# --- parsing -------------------------------------------------------------------


def test_parse_pem_text(device):
    assert parse_certificate(certificate_pem(device)) == device


def test_parse_pem_bytes(device):
    assert parse_certificate(certificate_pem(device).encode()) == device


def test_parse_pem_takes_first_certificate_and_skips_surrounding_text(device, other):
    text = "subject=CN=device-1\n" + certificate_pem(device) + "junk\n" + certificate_pem(other)
    assert parse_certificate(text) == device


def test_parse_pem_ignores_leading_non_certificate_blocks(device):
    key_block = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    assert parse_certificate(key_block + certificate_pem(device)) == device


def test_parse_single_line_base64_body(device):
    body = base64.b64encode(der_bytes(device)).decode()
    assert "\n" not in body
    assert parse_certificate(body) == device


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_parse_wrapped_base64_body(device, newline):
    body = base64.b64encode(der_bytes(device)).decode()
    wrapped = "  " + newline.join(textwrap.wrap(body, 64)) + newline
    assert parse_certificate(wrapped) == device


def test_parse_der_bytes(device):
    assert parse_certificate(der_bytes(device)) == device


@pytest.mark.parametrize(
    "data",
    ["hello world", b"hello world", "QUJDRA==", b"\x30\x82\x01\x00garbage", "\x00\xff"],
    ids=["text", "bytes", "base64-not-der", "truncated-der", "control-chars"],
)
def test_parse_garbage_is_rejected_with_clear_message(data):
    with pytest.raises(CertificateError, match=r"^Invalid certificate: not PEM, Base64 DER or DER$"):
        parse_certificate(data)


@pytest.mark.parametrize("data", ["", b"", "  \n\t", b"\r\n"])
def test_parse_empty_input_is_rejected(data):
    with pytest.raises(CertificateError, match="empty input"):
        parse_certificate(data)


def test_parse_corrupt_pem_block_is_rejected(device):
    pem = certificate_pem(device)
    corrupt = pem.replace(pem.splitlines()[3], "A" * 64)
    with pytest.raises(CertificateError, match="malformed PEM block"):
        parse_certificate(corrupt)


def test_parse_pem_without_certificate_block_is_rejected():
    with pytest.raises(CertificateError, match="no PEM CERTIFICATE block"):
        parse_certificate("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_certificate_error_is_a_value_error():
    assert issubclass(CertificateError, ValueError)


def test_split_pem_certificates_keeps_order(device, other):
    blocks = split_pem_certificates("chain:\n" + certificate_pem(device) + certificate_pem(other))
    assert [parse_certificate(b) for b in blocks] == [device, other]
    assert all(b.startswith("-----BEGIN CERTIFICATE-----") for b in blocks)
    assert all(b.endswith("-----END CERTIFICATE-----") for b in blocks)


def test_split_pem_certificates_without_blocks_raises():
    with pytest.raises(CertificateError):
        split_pem_certificates("no certificates here")


# --- encodings -----------------------------------------------------------------


def test_base64_body_is_one_padded_line_of_the_der(device):
    body = base64_body(device)
    assert body == base64.b64encode(der_bytes(device)).decode()
    assert "\n" not in body and len(body) % 4 == 0
    assert parse_certificate(body) == device


def test_base64_body_accepts_der_bytes(device):
    assert base64_body(der_bytes(device)) == base64_body(device)


# --- common name ---------------------------------------------------------------


def _cert_with_subject(subject: x509.Name) -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.now(timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, None)
    )


def test_common_name_of_issued_certificate(device):
    assert common_name(device) == "device-1"


def test_common_name_returns_first_of_several():
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "first")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "second")]),
        ]
    )
    assert common_name(_cert_with_subject(subject)) == "first"


def test_common_name_none_without_cn():
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")])
    assert common_name(_cert_with_subject(subject)) is None


# --- issuer check --------------------------------------------------------------


def test_is_issued_by_real_issuer(ca, device):
    assert is_issued_by(device, ca[0])


def test_is_issued_by_rejects_impostor_ca_with_same_name(ca, device):
    impostor, _ = create_ca("Test CA")
    assert impostor.subject == ca[0].subject == device.issuer
    assert not is_issued_by(device, impostor)


def test_is_issued_by_rejects_unrelated_ca(device):
    unrelated, _ = create_ca("Unrelated CA")
    assert not is_issued_by(device, unrelated)


def test_is_issued_by_rejects_self_signed_leaf_as_issuer(device, other):
    assert not is_issued_by(device, other)
    assert is_issued_by(other, other)


_KEY_FACTORIES = {
    "rsa-pkcs1v15": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("new_key", _KEY_FACTORIES.values(), ids=_KEY_FACTORIES.keys())
def test_is_issued_by_other_ca_key_types(new_key):
    ca_key = new_key()
    ca_cert, _ = create_ca("Keyed CA", key=ca_key)
    leaf, _ = issue_certificate(ca_cert, ca_key, "leaf")
    impostor, _ = create_ca("Keyed CA", key=new_key())
    assert is_issued_by(leaf, ca_cert)
    assert not is_issued_by(leaf, impostor)


def test_is_issued_by_rsa_pss_signature():
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert, _ = create_ca("PSS CA", key=ca_key)
    leaf_template, _ = issue_certificate(ca_cert, ca_key, "pss-leaf")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf_template.subject)
        .issuer_name(ca_cert.subject)
        .public_key(leaf_template.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf_template.not_valid_before_utc)
        .not_valid_after(leaf_template.not_valid_after_utc)
    )
    leaf = builder.sign(ca_key, hashes.SHA256(), rsa_padding=pss)
    assert is_issued_by(leaf, ca_cert)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = builder.sign(forger, hashes.SHA256(), rsa_padding=pss)
    assert not is_issued_by(forged, ca_cert)


# --- validity and CA flag ------------------------------------------------------


def test_validity_window_boundaries(ca):
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    cert, _ = issue_certificate(*ca, "future", days=10, not_before=start)
    end = start + timedelta(days=10)
    assert cert.not_valid_before_utc == start and cert.not_valid_after_utc == end
    assert not is_within_validity(cert, start - timedelta(seconds=1))
    assert is_within_validity(cert, start)
    assert is_within_validity(cert, start + timedelta(days=5))
    assert is_within_validity(cert, end)
    assert not is_within_validity(cert, end + timedelta(seconds=1))


def test_validity_defaults_to_now(ca, device):
    assert is_within_validity(device)
    future, _ = issue_certificate(*ca, "future", not_before=datetime.now(timezone.utc) + timedelta(hours=1))
    assert not is_within_validity(future)
    expired, _ = issue_certificate(*ca, "expired", days=1, not_before=datetime.now(timezone.utc) - timedelta(days=2))
    assert not is_within_validity(expired)


def test_validity_treats_naive_datetime_as_utc(ca):
    cert, _ = issue_certificate(*ca, "naive", days=1, not_before=datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert is_within_validity(cert, datetime(2030, 1, 1, 12))
    assert not is_within_validity(cert, datetime(2029, 12, 31, 23, 59))


def test_is_ca_certificate(ca, device, other):
    assert is_ca_certificate(ca[0])
    assert not is_ca_certificate(device)
    assert not is_ca_certificate(other)


def test_is_ca_certificate_false_without_basic_constraints():
    cert = _cert_with_subject(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")]))
    assert not is_ca_certificate(cert)
