"""Device credentials as ThingsBoard defines them: the three types, their save-time rules and
`credentialsId` derivation (SPEC §1.2–§1.4), and the MQTT basic connect-time check (§1.3).

Everything here is I/O-free: the store hands in what it found, this module decides.
"""
from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from . import certificates
from .errors import ValidationError
from .models import CredentialsType

_CERT_ARMOUR = re.compile(r"-----(BEGIN|END) CERTIFICATE-----|[\r\n]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_ALPHANUMERICS = string.ascii_letters + string.digits
GENERATED_SECRET_LENGTH = 20


class CredentialsError(ValidationError):
    """A credential that ThingsBoard would refuse to save; the message is ThingsBoard's."""

    field = "credentials"


def generate_secret() -> str:
    """20 random alphanumerics, like ThingsBoard's generated tokens, keys, secrets and names."""
    # One urandom call and rejection sampling (bytes below 4 × 62 map evenly onto the 62
    # alphanumerics): a tenth of the cost of 20 secrets.choice calls, which showed in profiles.
    chosen = ""
    while len(chosen) < GENERATED_SECRET_LENGTH:
        chosen += "".join(_ALPHANUMERICS[b % 62] for b in secrets.token_bytes(32) if b < 248)
    return chosen[:GENERATED_SECRET_LENGTH]


def certificate_body(text: str) -> str:
    """ThingsBoard's normalisation of a certificate before hashing or storing: PEM armour and
    line breaks removed, any other whitespace kept."""
    return _CERT_ARMOUR.sub("", text)


def sha3_hash(*parts: str | None, delimiter: str = "|") -> str:
    """ThingsBoard's `EncryptionUtil.getSha3Hash`: empty parts are skipped, the rest joined."""
    joined = delimiter.join(p for p in parts if p)
    return hashlib.sha3_256(certificate_body(joined).encode("utf-8")).hexdigest()


def certificate_thumbprint(cert_der: bytes) -> str:
    """The `credentialsId` of a presented certificate: SHA3-256 of the Base64 text of its DER."""
    return hashlib.sha3_256(base64.b64encode(cert_der)).hexdigest()


def _reject_control_chars(value: str | None, what: str) -> None:
    if value and _CONTROL_CHARS.search(value):
        raise CredentialsError(f"{what} should not contain control characters!")


@dataclass(frozen=True)
class AccessToken:
    token: str
    credentials_type = CredentialsType.ACCESS_TOKEN

    def __post_init__(self):
        if not self.token:
            raise CredentialsError("Device credentials id should be specified!")
        _reject_control_chars(self.token, "Device credentials id")

    @property
    def credentials_id(self) -> str:
        return self.token

    @property
    def credentials_value(self) -> None:
        return None


@dataclass(frozen=True)
class MqttBasic:
    client_id: str | None
    user_name: str | None
    password: str | None
    credentials_type = CredentialsType.MQTT_BASIC

    def __post_init__(self):
        if not self.client_id and not self.user_name:
            raise CredentialsError("Both mqtt client id and user name are empty!")
        if self.client_id and self.password and not self.user_name:
            raise CredentialsError("Password cannot be specified along with client id")
        _reject_control_chars(self.client_id, "MQTT client id")
        _reject_control_chars(self.user_name, "MQTT user name")
        _reject_control_chars(self.password, "MQTT password")

    @cached_property  # a SHA3 hash, asked for several times per save
    def credentials_id(self) -> str:
        if not self.client_id:
            return self.user_name  # plain text, shares the namespace with access tokens
        return sha3_hash(self.client_id, self.user_name)

    @property
    def credentials_id_is_public(self) -> bool:
        return bool(self.client_id)

    @property
    def credentials_value(self) -> str:
        return json.dumps(
            {"clientId": self.client_id, "userName": self.user_name, "password": self.password},
            separators=(",", ":"),
        )

    def as_object(self) -> dict:
        return json.loads(self.credentials_value)


@dataclass(frozen=True)
class X509Certificate:
    """Kept as ThingsBoard keeps it: the Base64 body. Callers that accept certificates from
    people (CLI, admin API) parse them first; provisioning stores what the device sent (§3.4)."""

    body: str
    credentials_type = CredentialsType.X509_CERTIFICATE

    def __post_init__(self):
        if not self.body.strip():
            raise CredentialsError("Device credentials value should be specified!")

    @classmethod
    def from_text(cls, text: str) -> X509Certificate:
        return cls(certificate_body(text).strip())

    @classmethod
    def parse(cls, text: str | bytes) -> X509Certificate:
        """A certificate a person supplies (CLI, admin API, CSV, web UI): PEM or Base64 DER,
        parsed and stored as its DER's Base64; CredentialsError if it is not a certificate."""
        try:
            return cls(certificates.base64_body(certificates.parse_certificate(text)))
        except certificates.CertificateError as e:
            raise CredentialsError(str(e)) from None

    @cached_property  # a SHA3 hash, asked for several times per save
    def credentials_id(self) -> str:
        return sha3_hash(self.body)

    @property
    def credentials_value(self) -> str:
        return self.body


NewCredentials = AccessToken | MqttBasic | X509Certificate


def credentials_from_json(credentials_type: str, credentials_id: str | None, credentials_value) -> NewCredentials:
    """Credentials in ThingsBoard's REST/CSV shape. For MQTT_BASIC the value is a JSON string
    (or, leniently, an object); a caller-supplied credentialsId is ignored as ThingsBoard does."""
    try:
        kind = CredentialsType(credentials_type)
    except ValueError:
        raise CredentialsError(f"Unsupported credentials type: {credentials_type!r}") from None
    if kind is CredentialsType.ACCESS_TOKEN:
        return AccessToken(credentials_id or "")
    if kind is CredentialsType.X509_CERTIFICATE:
        if not isinstance(credentials_value, str):
            raise CredentialsError("Device credentials value should be specified!")
        return X509Certificate.from_text(credentials_value)
    value = credentials_value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise CredentialsError("Invalid credentials body for simple mqtt credentials!") from None
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), (str, type(None))) for k in ("clientId", "userName", "password")
    ):
        raise CredentialsError("Invalid credentials body for simple mqtt credentials!")
    return MqttBasic(value.get("clientId"), value.get("userName"), value.get("password"))


# --- connect-time check ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCredentials:
    """What a login lookup finds: type, owner and the digests of the MQTT basic parts."""

    device_id: str
    credentials_type: CredentialsType
    client_id_digest: bytes | None = None
    user_name_digest: bytes | None = None
    password_digest: bytes | None = None
    version: tuple[str, int] | None = None  # (credentials id, version): changes when they are replaced


class BasicCheck(enum.Enum):
    VALID = "VALID"
    HASH_MISMATCH = "HASH_MISMATCH"
    PASSWORD_MISMATCH = "PASSWORD_MISMATCH"


Find = Callable[[str], "StoredCredentials | None"]
Matches = Callable[[str, "bytes | None"], bool]


def check_basic(rec: StoredCredentials, client_id: str, username: str | None, password: str | None,
                matches: Matches) -> BasicCheck:
    """ThingsBoard's `checkMqttCredentials`; a NULL digest means the stored part is empty.
    An extra password sent by the client is ignored when none is stored."""
    if rec.client_id_digest is not None and not matches(client_id, rec.client_id_digest):
        return BasicCheck.HASH_MISMATCH
    if rec.user_name_digest is not None and not matches(username or "", rec.user_name_digest):
        return BasicCheck.HASH_MISMATCH
    if rec.password_digest is not None and not matches(password or "", rec.password_digest):
        return BasicCheck.PASSWORD_MISMATCH
    return BasicCheck.VALID


def basic_lookup_ids(client_id: str, username: str | None) -> list[str]:
    """Every credentials id authenticate_basic may `find` for this login, in its order: a store
    across a network fetches them in one round trip instead of one per lookup."""
    if not username:
        return [sha3_hash(client_id)]
    return [sha3_hash(client_id, username), username]


def authenticate_basic(client_id: str, username: str | None, password: str | None, *,
                       find: Find, matches: Matches) -> StoredCredentials | None:
    """ThingsBoard's lookup order for a username/password/client-id login (SPEC §1.3)."""

    def valid_basic(rec: StoredCredentials | None) -> bool:
        return (rec is not None and rec.credentials_type is CredentialsType.MQTT_BASIC
                and check_basic(rec, client_id, username, password, matches) is BasicCheck.VALID)

    if not username:
        rec = find(sha3_hash(client_id))
        return rec if valid_basic(rec) else None  # no access-token fallback

    rec = find(sha3_hash(client_id, username))
    if rec is not None and rec.credentials_type is CredentialsType.MQTT_BASIC:
        result = check_basic(rec, client_id, username, password, matches)
        if result is BasicCheck.VALID:
            return rec
        if result is BasicCheck.PASSWORD_MISMATCH:
            return None  # the right identity with a wrong password must not fall back to a token
    rec = find(username)
    if rec is None:
        return None
    if rec.credentials_type is CredentialsType.ACCESS_TOKEN:
        return rec  # password and client id are ignored for tokens
    return rec if valid_basic(rec) else None
