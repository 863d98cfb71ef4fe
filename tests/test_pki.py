"""Tests for gatehouse.pki: certificate profiles, the development PKI on disk, and real TLS."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gatehouse.certificates import common_name, der_bytes, is_ca_certificate, is_issued_by, parse_certificate
from gatehouse.pki import (
    DEVELOPMENT_CA_NAME,
    DevelopmentPki,
    PkiError,
    certificate_pem,
    create_ca,
    create_self_signed,
    ensure_development_pki,
    generate_private_key,
    issue_certificate,
    issue_device_certificate,
    private_key_pem,
    write_private_file,
)

TEST_HOSTNAME = "gatehouse-test-host"
PKI_FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def _ext(cert: x509.Certificate, ext_type):
    return cert.extensions.get_extension_for_class(ext_type)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture
def fixed_hostname(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: TEST_HOSTNAME)


@pytest.fixture
def pki(tmp_path, fixed_hostname) -> DevelopmentPki:
    return ensure_development_pki(tmp_path / "data" / "pki")


@pytest.fixture(scope="module")
def shared_pki(tmp_path_factory) -> DevelopmentPki:
    """One PKI for the read-only TLS tests, which are the slow part."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "gethostname", lambda: TEST_HOSTNAME)
        return ensure_development_pki(tmp_path_factory.mktemp("pki"))


# --- certificate profiles ------------------------------------------------------


def test_generate_private_key_is_p256():
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_create_ca_profile():
    cert, key = create_ca("Profile CA", days=30)
    assert common_name(cert) == "Profile CA"
    assert cert.subject == cert.issuer and is_issued_by(cert, cert)
    assert cert.public_key() == key.public_key()
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)


def test_create_ca_uses_given_key():
    key = generate_private_key()
    cert, returned = create_ca("Keyed CA", key=key)
    assert returned is key and cert.public_key() == key.public_key()


def test_validity_starts_in_the_past_for_clock_skew():
    now = datetime.now(timezone.utc)
    ca_cert, ca_key = create_ca("Skew CA")
    leaf, _ = issue_certificate(ca_cert, ca_key, "leaf")
    for cert in (ca_cert, leaf):
        assert now - timedelta(minutes=30) < cert.not_valid_before_utc <= now - timedelta(minutes=1)


def test_issue_certificate_client_profile():
    ca_cert, ca_key = create_ca("Issuing CA")
    cert, key = issue_certificate(ca_cert, ca_key, "device-7", days=10)
    assert common_name(cert) == "device-7" and cert.issuer == ca_cert.subject
    assert is_issued_by(cert, ca_cert) and cert.public_key() == key.public_key()
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == (
        _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    )
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=10)


def test_issue_certificate_server_profile_has_typed_sans():
    ca_cert, ca_key = create_ca("Issuing CA")
    names = ["localhost", "127.0.0.1", "::1", "mqtt.example.test"]
    cert, _ = issue_certificate(ca_cert, ca_key, "server", client=False, server_names=names)
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_issue_certificate_uses_given_key_and_not_before():
    ca_cert, ca_key = create_ca("Issuing CA")
    key = generate_private_key()
    start = datetime(2031, 5, 1, tzinfo=timezone.utc)
    cert, returned = issue_certificate(ca_cert, ca_key, "leaf", key=key, not_before=start, days=2)
    assert returned is key and cert.public_key() == key.public_key()
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, start + timedelta(days=2))


def test_serial_numbers_are_random():
    ca_cert, ca_key = create_ca("Issuing CA")
    serials = {issue_certificate(ca_cert, ca_key, "same")[0].serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_create_self_signed_profile():
    cert, key = create_self_signed("lonely-device", days=3)
    assert common_name(cert) == "lonely-device" and cert.subject == cert.issuer
    assert is_issued_by(cert, cert) and not is_ca_certificate(cert)
    assert cert.public_key() == key.public_key()
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _ext(cert, x509.ExtendedKeyUsage).value
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3)


def test_pem_encoders_round_trip():
    cert, key = create_self_signed("pem")
    assert parse_certificate(certificate_pem(cert)) == cert
    key_pem = private_key_pem(key)
    assert key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not "EC PRIVATE KEY"
    loaded = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert loaded.public_key() == key.public_key()


def test_write_private_file_is_0600_even_with_permissive_umask(tmp_path):
    target = tmp_path / "secret.key"
    old_umask = os.umask(0)
    try:
        write_private_file(target, "secret")
    finally:
        os.umask(old_umask)
    assert _mode(target) == 0o600
    assert target.read_text() == "secret"


def test_write_private_file_refuses_existing_file(tmp_path):
    target = tmp_path / "secret.key"
    target.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        write_private_file(target, b"replacement")
    assert target.read_bytes() == b"original"


# --- development PKI on disk -----------------------------------------------------


def test_ensure_development_pki_creates_files(pki, tmp_path):
    assert pki == DevelopmentPki.in_directory(tmp_path / "data" / "pki")
    assert sorted(p.name for p in pki.directory.iterdir()) == sorted(PKI_FILES)
    assert _mode(pki.ca_key) == 0o600 and _mode(pki.server_key) == 0o600
    assert _mode(pki.directory) & 0o077 == 0
    ca = parse_certificate(pki.ca_cert.read_bytes())
    assert common_name(ca) == DEVELOPMENT_CA_NAME and is_ca_certificate(ca)
    server = parse_certificate(pki.server_cert.read_bytes())
    assert is_issued_by(server, ca) and not is_ca_certificate(server)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    server_key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    assert ca_key.public_key() == ca.public_key()
    assert server_key.public_key() == server.public_key()


def test_server_certificate_names_this_machine(tmp_path, fixed_hostname):
    pki = ensure_development_pki(tmp_path, hostnames=["mqtt.example.test", "10.0.0.5", "localhost"])
    server = parse_certificate(pki.server_cert.read_bytes())
    san = _ext(server, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", TEST_HOSTNAME, "mqtt.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.5"),
    ]
    assert ExtendedKeyUsageOID.SERVER_AUTH in _ext(server, x509.ExtendedKeyUsage).value


def test_ensure_development_pki_is_idempotent(pki):
    before = _snapshot(pki.directory)
    assert ensure_development_pki(pki.directory, hostnames=["new.example.test"]) == pki
    assert _snapshot(pki.directory) == before


def test_ensure_development_pki_recreates_missing_server_pair_with_existing_ca(pki):
    ca_before = pki.ca_cert.read_bytes(), pki.ca_key.read_bytes()
    old_server = pki.server_cert.read_bytes()
    pki.server_cert.unlink()
    pki.server_key.unlink()
    ensure_development_pki(pki.directory)
    assert (pki.ca_cert.read_bytes(), pki.ca_key.read_bytes()) == ca_before
    server = parse_certificate(pki.server_cert.read_bytes())
    assert pki.server_cert.read_bytes() != old_server
    assert is_issued_by(server, parse_certificate(ca_before[0]))
    assert _mode(pki.server_key) == 0o600


@pytest.mark.parametrize("missing", PKI_FILES)
def test_ensure_development_pki_refuses_half_present_pair(pki, missing):
    (pki.directory / missing).unlink()
    before = _snapshot(pki.directory)
    with pytest.raises(PkiError, match="without " + missing.replace(".", r"\.")):
        ensure_development_pki(pki.directory)
    assert _snapshot(pki.directory) == before


def test_ensure_development_pki_refuses_server_pair_without_ca(pki):
    pki.ca_cert.unlink()
    pki.ca_key.unlink()
    before = _snapshot(pki.directory)
    with pytest.raises(PkiError, match="CA"):
        ensure_development_pki(pki.directory)
    assert _snapshot(pki.directory) == before


# --- real TLS on loopback ------------------------------------------------------


@dataclass
class Handshake:
    server_peer_der: bytes | None = None
    server_error: Exception | None = None
    client_error: Exception | None = None


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> Handshake:
    """Run one TLS handshake over 127.0.0.1 and report what each side saw."""
    result = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    result.server_peer_der = tls.getpeercert(binary_form=True)
                    tls.sendall(b"ok")
            except OSError as exc:
                result.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    # With TLS 1.3 the server judges the client certificate after the
                    # client's handshake returns; waiting for "ok" waits for that verdict.
                    if tls.recv(2) != b"ok":
                        raise ConnectionError("server closed the connection")
        except OSError as exc:
            result.client_error = exc
        finally:
            thread.join(10)
    assert not thread.is_alive()
    return result


def _server_context(pki: DevelopmentPki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.load_verify_locations(pki.ca_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(ca_file: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1", TEST_HOSTNAME])
def test_tls_client_verifies_server_against_ca(shared_pki, hostname):
    result = _handshake(_server_context(shared_pki), _client_context(shared_pki.ca_cert), hostname)
    assert result.client_error is None and result.server_error is None
    assert result.server_peer_der is None  # no client certificate was requested


def test_tls_client_rejects_wrong_hostname(shared_pki):
    result = _handshake(_server_context(shared_pki), _client_context(shared_pki.ca_cert), "not-this-host.example")
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(result.client_error)


def test_tls_client_rejects_server_from_another_ca(shared_pki, tmp_path):
    other = ensure_development_pki(tmp_path)  # same CA name, different key
    result = _handshake(_server_context(shared_pki), _client_context(other.ca_cert), "localhost")
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


def test_tls_server_accepts_issued_device_certificate(shared_pki, tmp_path):
    cert_path, key_path = issue_device_certificate(shared_pki, "tls-device", tmp_path)
    client_ctx = _client_context(shared_pki.ca_cert, cert_path, key_path)
    result = _handshake(_server_context(shared_pki, require_client_cert=True), client_ctx, "localhost")
    assert result.client_error is None and result.server_error is None
    assert result.server_peer_der == der_bytes(parse_certificate(cert_path.read_bytes()))


def test_tls_server_rejects_device_certificate_from_impostor_ca(shared_pki, tmp_path):
    impostor = ensure_development_pki(tmp_path / "impostor")
    cert_path, key_path = issue_device_certificate(impostor, "impostor-device", tmp_path)
    client_ctx = _client_context(shared_pki.ca_cert, cert_path, key_path)
    result = _handshake(_server_context(shared_pki, require_client_cert=True), client_ctx, "localhost")
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.server_peer_der is None
    assert result.client_error is not None


# --- device certificates -------------------------------------------------------


def test_issue_device_certificate_writes_client_pair(pki, tmp_path):
    out_dir = tmp_path / "devices" / "new"
    cert_path, key_path = issue_device_certificate(pki, "sensor-01", out_dir, days=30)
    assert (cert_path, key_path) == (out_dir / "sensor-01.pem", out_dir / "sensor-01.key")
    assert _mode(key_path) == 0o600
    cert = parse_certificate(cert_path.read_bytes())
    assert common_name(cert) == "sensor-01"
    assert is_issued_by(cert, parse_certificate(pki.ca_cert.read_bytes()))
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


@pytest.mark.parametrize("existing", ["sensor-01.pem", "sensor-01.key"])
def test_issue_device_certificate_refuses_to_overwrite(pki, tmp_path, existing):
    (tmp_path / existing).write_text("keep me")
    with pytest.raises(PkiError, match="refusing to overwrite"):
        issue_device_certificate(pki, "sensor-01", tmp_path)
    assert (tmp_path / existing).read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.glob("sensor-01.*")) == [existing]


@pytest.mark.parametrize(
    "name",
    ["", "   ", "a/b", "../escape", "a\\b", "line\nbreak", "nul\x00byte", "del\x7f", "c1\x85", "x" * 65, "é" * 33],
)
def test_issue_device_certificate_rejects_bad_names(pki, tmp_path, name):
    out_dir = tmp_path / "out"
    with pytest.raises(PkiError, match="device name"):
        issue_device_certificate(pki, name, out_dir)
    assert not out_dir.exists()


@pytest.mark.parametrize("name", ["x" * 64, "é" * 32], ids=["ascii", "utf8"])
def test_issue_device_certificate_accepts_longest_allowed_name(pki, tmp_path, name):
    cert_path, _ = issue_device_certificate(pki, name, tmp_path)
    assert common_name(parse_certificate(cert_path.read_bytes())) == name


def test_issue_device_certificate_without_ca_fails_clearly(tmp_path):
    with pytest.raises(PkiError, match="gatehouse init"):
        issue_device_certificate(DevelopmentPki.in_directory(tmp_path / "none"), "dev", tmp_path)


def test_issue_device_certificate_refuses_mismatched_ca_key(pki, tmp_path):
    pki.ca_key.unlink()
    write_private_file(pki.ca_key, private_key_pem(generate_private_key()))
    with pytest.raises(PkiError, match="does not belong"):
        issue_device_certificate(pki, "dev", tmp_path / "out")
    assert not (tmp_path / "out").exists()
