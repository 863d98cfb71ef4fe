"""The admin REST API's and web UI's users: passwords kept as scrypt hashes, checked in the same
time whether the user exists or not."""
from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from ..clock import now_ms
from ..errors import ValidationError
from ..storage import IntegrityError
from .context import RegistryContext
from .rules import integrity_error

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class Administrators:
    def __init__(self, context: RegistryContext):
        self._store = context.store

    def add(self, username: str, password: str) -> None:
        if len(password or "") < 8:
            raise ValidationError("Admin password must be at least 8 characters long", field="password")
        try:
            with self._store.transaction():
                self._store.insert_admin_user({"username": username.strip(), "created_time": now_ms(),
                                               "password_hash": _hash_password(password)})
        except IntegrityError as e:
            raise integrity_error(e) from None

    def any(self) -> bool:
        return self._store.count_admin_users() > 0

    def exists(self, username: str) -> bool:
        return self._store.admin_user(username) is not None

    def verify(self, username: str, password: str) -> bool:
        row = self._store.admin_user(username)
        # Hash even for unknown users so that response time does not reveal which exist.
        return _verify_password(password, row["password_hash"] if row else _dummy_hash()) and row is not None


def _hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def _verify_password(password: str, encoded: str) -> bool:
    _, n, r, p, salt, digest = encoded.split("$")
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


@functools.cache
def _dummy_hash() -> str:
    return _hash_password(secrets.token_hex(16))
