"""Device provisioning decisions: ThingsBoard's strategy table (SPEC §3.4) and X.509
certificate-chain provisioning (§1.4.2), as pure functions.

The registry reads the profile and any existing device inside one write transaction, asks
`decide_provision` / `decide_x509_chain` what to do, and applies the answer in that same
transaction, which is what makes concurrent requests for one new name yield one SUCCESS.
"""
from __future__ import annotations

import enum
import hmac
import re
from dataclasses import dataclass

from .credentials import AccessToken, CredentialsError, MqttBasic, NewCredentials, X509Certificate
from .models import CredentialsType, DeviceProfile, ProvisionType, java_trim

PROVISION_STATE_KEY = "provisionState"
PROVISIONED = "provisioned"
NOT_FOUND_MESSAGE = "Provision data was not found!"
FAILURE_MESSAGE = "Failed to provision device!"


class ProvisionStatus(str, enum.Enum):
    SUCCESS = "SUCCESS"
    NOT_FOUND = "NOT_FOUND"
    FAILURE = "FAILURE"


class ProvisionRequestError(ValueError):
    """A request ThingsBoard cannot even process (no answer on MQTT, an error status on HTTP and
    CoAP): not an object, key or secret field missing, unknown credentials type, or a
    key/secret request for an X.509-chain profile."""


def _str_field(obj: dict, key: str) -> str:
    # ThingsBoard reads these with getAsString(): absent is "", scalars become their text.
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ProvisionRequestError(f"{key} must be a string")


@dataclass(frozen=True)
class ProvisionRequest:
    provision_device_key: str
    provision_device_secret: str
    device_name: str = ""
    credentials_type: CredentialsType = CredentialsType.ACCESS_TOKEN
    token: str = ""
    client_id: str = ""
    username: str = ""
    password: str = ""
    hash: str = ""
    gateway: bool = False

    @classmethod
    def from_json(cls, obj: object) -> ProvisionRequest:
        """SPEC §3.2; raises ProvisionRequestError for what §3.6 calls a hard error."""
        if not isinstance(obj, dict):
            raise ProvisionRequestError("Provision request must be a JSON object")
        for required in ("provisionDeviceKey", "provisionDeviceSecret"):
            if required not in obj:
                raise ProvisionRequestError(f"Provision request is missing {required}")
        type_name = _str_field(obj, "credentialsType") or CredentialsType.ACCESS_TOKEN.value
        try:
            credentials_type = CredentialsType(type_name)
        except ValueError:
            raise ProvisionRequestError(f"Unsupported credentials type: {type_name}") from None
        return cls(
            provision_device_key=_str_field(obj, "provisionDeviceKey"),
            provision_device_secret=_str_field(obj, "provisionDeviceSecret"),
            device_name=_str_field(obj, "deviceName"),
            credentials_type=credentials_type,
            token=_str_field(obj, "token"),
            client_id=_str_field(obj, "clientId"),
            username=_str_field(obj, "username"),
            password=_str_field(obj, "password"),
            hash=_str_field(obj, "hash"),
            gateway=obj.get("gateway") is True,
        )

    def requested_credentials(self) -> NewCredentials | None:
        """The device's own credentials, or None for a generated token. ThingsBoard only looks
        at credentialsType when one of the credential fields is non-empty (§3.4); raises
        CredentialsError when the fields do not make a valid credential."""
        if not any((self.token, self.hash, self.username, self.password, self.client_id)):
            return None
        if self.credentials_type is CredentialsType.ACCESS_TOKEN:
            return AccessToken(self.token)
        if self.credentials_type is CredentialsType.MQTT_BASIC:
            return MqttBasic(self.client_id, self.username, self.password)
        return X509Certificate.from_text(self.hash)


@dataclass(frozen=True)
class ExistingDevice:
    id: str
    name: str
    profile_id: str
    credentials_type: CredentialsType
    provision_state: str | None = None


# --- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotFound:
    reason: str


@dataclass(frozen=True)
class Failure:
    reason: str
    device_id: str | None = None


@dataclass(frozen=True)
class CreateDevice:
    name: str | None  # None: generate one
    credentials: NewCredentials | None  # None: generate an access token
    gateway: bool = False


@dataclass(frozen=True)
class MarkProvisioned:
    """CHECK_PRE_PROVISIONED success: set provisionState, answer with the existing credentials."""

    device_id: str


@dataclass(frozen=True)
class UseExisting:
    """X.509 chain, device already in the profile: rotate to the presented certificate if its
    credentials are X.509, then answer with its credentials."""

    device_id: str
    rotate_to: X509Certificate | None


Decision = NotFound | Failure | CreateDevice | MarkProvisioned | UseExisting


def decide_provision(request: ProvisionRequest, profile: DeviceProfile | None,
                     existing: ExistingDevice | None) -> Decision:
    """ThingsBoard's `provisionDevice`, in its order of checks (SPEC §3.4). The caller looks
    up `profile` by the request's key and `existing` by the trimmed device name."""
    name = java_trim(request.device_name)
    if request.device_name and not name:
        return Failure("device name is blank")
    if not request.provision_device_key or not request.provision_device_secret:
        return NotFound("provision key or secret is empty")
    if profile is None or profile.provision_device_secret is None:
        return NotFound("no profile has this provision key")
    if profile.provision_type is ProvisionType.X509_CERTIFICATE_CHAIN:
        raise ProvisionRequestError("Invalid provision strategy type!")
    if profile.provision_type is ProvisionType.DISABLED or not hmac.compare_digest(
        profile.provision_device_secret.encode(), request.provision_device_secret.encode()
    ):
        return NotFound("provision secret does not match")

    if profile.provision_type is ProvisionType.ALLOW_CREATE_NEW_DEVICES:
        if existing is not None:
            return Failure("a device with this name already exists", existing.id)
        try:
            credentials = request.requested_credentials()
        except CredentialsError as e:
            return Failure(f"invalid credentials: {e}")
        return CreateDevice(name or None, credentials, request.gateway)

    # CHECK_PRE_PROVISIONED_DEVICES
    if existing is None or existing.profile_id != profile.id:
        return Failure("no pre-provisioned device with this name in the profile")
    if existing.provision_state is not None:
        return Failure(f"device provision state is {existing.provision_state!r}", existing.id)
    return MarkProvisioned(existing.id)


def device_name_from_common_name(common_name: str | None, pattern: str) -> str | None:
    """ThingsBoard's CN rule: regex search (not full match), capture group 1; None when the
    CN is missing, the regex is bad or has no group 1, or nothing matches."""
    if not common_name:
        return None
    try:
        match = re.search(pattern, common_name)
        return (match.group(1) or None) if match else None
    except (re.error, IndexError):
        return None


def decide_x509_chain(profile: DeviceProfile, common_name: str | None, leaf: X509Certificate,
                      existing_by_name) -> Decision:
    """`provisionDeviceViaX509Chain` (SPEC §1.4.2) for a leaf certificate already known to be
    issued by the profile's CA. `existing_by_name(name)` returns an ExistingDevice or None."""
    name = device_name_from_common_name(common_name, profile.certificate_regex or "")
    if name is None:
        return Failure("certificate CN does not match the profile's regex")
    existing = existing_by_name(name)
    if existing is not None and existing.profile_id == profile.id:
        rotate = leaf if existing.credentials_type is CredentialsType.X509_CERTIFICATE else None
        return UseExisting(existing.id, rotate)
    if not profile.allow_create_by_x509:
        return Failure("creating devices by certificate is not allowed by the profile")
    if existing is not None:
        return Failure("a device with this name exists in another profile", existing.id)
    return CreateDevice(name, leaf)


# --- response --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionResult:
    status: ProvisionStatus
    credentials_type: CredentialsType | None = None
    credentials_value: str | dict | None = None
    device_id: str | None = None
    device_name: str | None = None
    reason: str | None = None  # for the audit trail and logs; never sent to the device
    strategy: ProvisionType | None = None  # the matched profile's (metrics); None: no profile matched

    def to_json(self) -> dict:
        """SPEC §3.3 in ThingsBoard's key order, plus deviceId and deviceName on success."""
        if self.status is ProvisionStatus.NOT_FOUND:
            return {"errorMsg": NOT_FOUND_MESSAGE, "status": self.status.value}
        if self.status is ProvisionStatus.FAILURE:
            return {"errorMsg": FAILURE_MESSAGE, "status": self.status.value}
        return {
            "credentialsValue": self.credentials_value,
            "credentialsType": self.credentials_type.value,
            "status": self.status.value,
            "deviceId": self.device_id,
            "deviceName": self.device_name,
        }
