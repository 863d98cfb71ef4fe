"""Device credentials as stored: sealed (access tokens, MQTT basic values), digested (what logins
look up and compare), or public (X.509 certificates and SHA3 ids), and revealed again for the
operator. The store never sees a plain secret."""
from __future__ import annotations

import json

from ..credentials import AccessToken, MqttBasic, NewCredentials, StoredCredentials
from ..errors import ValidationError
from ..login import APPLICATION_USERNAME_PREFIX, SERVICE_USERNAME_PREFIX
from ..models import CredentialsType, DeviceCredentials
from ..server_key import ServerKey


def _context(row_id: str) -> str:
    # Authenticated with the sealed value: a value copied into another row does not open there.
    return f"device_credentials:{row_id}"


def credentials_columns(key: ServerKey, row_id: str, creds: NewCredentials) -> dict:
    """The device_credentials columns of `creds` in the row `row_id`, every unused one None."""
    credentials_id = creds.credentials_id
    for reserved in (APPLICATION_USERNAME_PREFIX, SERVICE_USERNAME_PREFIX):
        if credentials_id.startswith(reserved):
            raise ValidationError(f"Device credentials must not start with {reserved!r}", field="credentials")
    columns = {
        "credentials_type": creds.credentials_type.value,
        "lookup_digest": key.digest(credentials_id),
        "public_credentials_id": None, "sealed_value": None, "client_id_digest": None,
        "user_name_digest": None, "password_digest": None, "certificate": None,
    }
    if isinstance(creds, AccessToken):
        columns["sealed_value"] = key.seal(creds.token, _context(row_id))
    elif isinstance(creds, MqttBasic):
        columns["sealed_value"] = key.seal(creds.credentials_value, _context(row_id))
        if creds.credentials_id_is_public:
            columns["public_credentials_id"] = credentials_id
        for column, part in (("client_id_digest", creds.client_id), ("user_name_digest", creds.user_name),
                             ("password_digest", creds.password)):
            columns[column] = key.digest(part) if part else None
    else:
        columns["public_credentials_id"] = credentials_id
        columns["certificate"] = creds.body
    return columns


def reveal(key: ServerKey, row: dict) -> DeviceCredentials:
    """The credentials of a stored row with their secrets opened (the operator's view)."""
    kind = CredentialsType(row["credentials_type"])
    if kind is CredentialsType.ACCESS_TOKEN:
        credentials_id, value = key.open(row["sealed_value"], _context(row["id"])), None
    elif kind is CredentialsType.MQTT_BASIC:
        value = key.open(row["sealed_value"], _context(row["id"]))
        credentials_id = row["public_credentials_id"] or json.loads(value)["userName"]
    else:
        credentials_id, value = row["public_credentials_id"], row["certificate"]
    return DeviceCredentials(id=row["id"], device_id=row["device_id"], credentials_type=kind,
                             credentials_id=credentials_id, credentials_value=value)


def stored_credentials(row: dict) -> StoredCredentials:
    """What a login compares against (digests only) and the version its session keeps."""
    return StoredCredentials(device_id=row["device_id"], credentials_type=CredentialsType(row["credentials_type"]),
                             client_id_digest=row["client_id_digest"], user_name_digest=row["user_name_digest"],
                             password_digest=row["password_digest"], version=(row["id"], row["version"]))
