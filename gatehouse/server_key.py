"""The server key: what keeps a stolen database file from yielding a usable credential.

Secrets are stored twice, neither time in plain text: an HMAC digest (keyed lookup and
constant-time verification) and, only where an API must give the secret back, an AES-GCM sealed
copy. Both keys are derived from one random master key kept in the data dir with mode 0600, so
the database alone is useless to an attacker while the key file alone holds no credential.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_BYTES = 32
_NONCE_BYTES = 12


class ServerKeyError(Exception):
    pass


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


class ServerKey:
    def __init__(self, master: bytes):
        if len(master) != MASTER_KEY_BYTES:
            raise ServerKeyError(f"server key must be {MASTER_KEY_BYTES} bytes, got {len(master)}")
        self._digest_key = _derive(master, b"gatehouse credential digest v1")
        self._aead = AESGCM(_derive(master, b"gatehouse credential seal v1"))
        self._service_key = _derive(master, b"gatehouse service account v1")
        self._jwt_key = _derive(master, b"gatehouse admin jwt v1")
        self._web_session_key = _derive(master, b"gatehouse web ui session v1")

    @classmethod
    def generate(cls) -> ServerKey:
        return cls(secrets.token_bytes(MASTER_KEY_BYTES))

    @classmethod
    def load_or_create(cls, path: Path) -> ServerKey:
        """Read the key file, creating it (mode 0600, never overwriting) on first use."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        master = secrets.token_bytes(MASTER_KEY_BYTES)
        with os.fdopen(fd, "wb") as f:
            f.write(master)
        return cls(master)

    def digest(self, value: str) -> bytes:
        return hmac.digest(self._digest_key, value.encode("utf-8"), "sha256")  # the one-shot C path

    def matches(self, value: str, stored_digest: bytes | None) -> bool:
        """Constant-time check of a presented secret against its stored digest."""
        if stored_digest is None:
            return False
        return hmac.compare_digest(self.digest(value), stored_digest)

    def service_password(self, account: str) -> str:
        """The MQTT password of a Gatehouse process's service account: derived, never stored,
        so only processes that can read the server key can log in with it."""
        mac = hmac.new(self._service_key, account.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def jwt_signing_key(self) -> bytes:
        """The HMAC key of the admin API's JWTs: derived, so rotating the server key logs every
        administrator out and a stolen database signs nothing."""
        return self._jwt_key

    def web_session_key(self) -> bytes:
        """The web UI's Flask secret key (signs its session cookies and CSRF tokens): derived like
        the JWT key, so rotating the server key logs every operator out."""
        return self._web_session_key

    def seal(self, plaintext: str, context: str) -> bytes:
        """Encrypt; `context` (e.g. the owning row's id) is authenticated, so a sealed value
        copied into another row does not open there."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))

    def open(self, sealed: bytes, context: str) -> str:
        try:
            plain = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.encode("utf-8"))
        except InvalidTag:
            raise ServerKeyError("sealed value does not open with this server key") from None
        return plain.decode("utf-8")
