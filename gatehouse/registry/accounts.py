"""MQTT accounts that are not devices: backend applications (a password shown once, its digest
kept) and Gatehouse's own processes (service accounts, passwords derived from the server key)."""
from __future__ import annotations

import hmac
import re

from ..clock import now_ms
from ..credentials import generate_secret
from ..errors import NotFoundError, ValidationError
from ..login import APPLICATION_USERNAME_PREFIX, SERVICE_USERNAME_PREFIX, LoginOutcome, LoginResult
from ..storage import IntegrityError
from .context import RegistryContext


class Accounts:
    def __init__(self, context: RegistryContext):
        self._store = context.store
        self._key = context.key

    def create_application(self, name: str) -> tuple[str, str]:
        """A backend application's MQTT account; returns (username, password). The password is
        shown this once and only its digest is kept."""
        name = (name or "").strip()
        if not name or re.search(r"[\x00-\x20\x7f/#+]", name):
            raise ValidationError("Application name must be non-empty, without spaces, control characters, / # +",
                                  field="name")
        username, password = APPLICATION_USERNAME_PREFIX + name, generate_secret()
        try:
            with self._store.transaction():
                self._store.insert_application({"name": name, "created_time": now_ms(), "username": username,
                                                "password_digest": self._key.digest(password)})
        except IntegrityError:
            raise ValidationError(f"Application {name!r} already exists") from None
        return username, password

    def list_applications(self) -> list[str]:
        return [row["name"] for row in self._store.applications()]

    def delete_application(self, name: str) -> None:
        with self._store.transaction():
            if not self._store.delete_application(name):
                raise NotFoundError(f"Application {name!r} not found")

    def application_login(self, username: str, password: str | None) -> LoginResult:
        row = self._store.application(username=username)
        if row is None or not self._key.matches(password or "", row["password_digest"]):
            return LoginResult(LoginOutcome.BAD_USERNAME_OR_PASSWORD)
        return LoginResult(LoginOutcome.APPLICATION, application=row["name"])

    def service_credentials(self, account: str) -> tuple[str, str]:
        """(MQTT username, password) of a Gatehouse process's service account, e.g. "sidecar"."""
        return SERVICE_USERNAME_PREFIX + account, self._key.service_password(account)

    def service_login(self, username: str, password: str | None) -> LoginResult:
        account = username[len(SERVICE_USERNAME_PREFIX):]
        expected = self._key.service_password(account).encode()
        if not account or not hmac.compare_digest((password or "").encode(), expected):
            return LoginResult(LoginOutcome.BAD_USERNAME_OR_PASSWORD)
        return LoginResult(LoginOutcome.SERVICE, application=account)
