"""Login outcomes: what a transport needs to pick its refusal code (SPEC §2.1)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .models import CredentialsType, Device
from .provisioning import ProvisionResult

PROVISION_LOGIN = "provision"
# Application accounts' MQTT user names; no device credential may start with it.
APPLICATION_USERNAME_PREFIX = "gatehouse-app:"
# Service accounts: other Gatehouse processes (the sidecar) with the server key's password.
SERVICE_USERNAME_PREFIX = "gatehouse-service:"


class LoginOutcome(enum.Enum):
    ACCEPTED = "ACCEPTED"
    APPLICATION = "APPLICATION"  # a backend application account (gatehouse/devices/# namespace)
    SERVICE = "SERVICE"  # a Gatehouse process speaking for its HTTP and CoAP devices
    PROVISION_SESSION = "PROVISION_SESSION"  # username or client id "provision"
    BAD_USERNAME_OR_PASSWORD = "BAD_USERNAME_OR_PASSWORD"  # MQTT 5 0x86, MQTT 3 0x05
    CLIENT_ID_NOT_VALID = "CLIENT_ID_NOT_VALID"  # MQTT 5 0x85, MQTT 3 0x02
    NOT_AUTHORIZED = "NOT_AUTHORIZED"  # MQTT 5 0x87, MQTT 3 0x05
    SERVER_UNAVAILABLE = "SERVER_UNAVAILABLE"  # MQTT 5 0x88, MQTT 3 0x03


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    device: Device | None = None
    application: str | None = None
    # Which credentials the device logged in with: a session must end when they change.
    credentials_version: tuple[str, int] | None = None
    credentials_type: CredentialsType | None = None  # of an ACCEPTED device login
    # The X.509 certificate-chain provisioning this login ran: an unknown certificate whose
    # issuer a chain profile trusts.
    provisioning: ProvisionResult | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome is LoginOutcome.ACCEPTED


def is_provision_login(client_id: str | None, username: str | None) -> bool:
    return username == PROVISION_LOGIN or client_id == PROVISION_LOGIN


def refusal_for_unknown_credentials(client_id: str | None, username: str | None,
                                    password: str | None) -> LoginOutcome:
    """Which refusal ThingsBoard gives when no credentials matched, by what was supplied."""
    if username or password:
        return LoginOutcome.BAD_USERNAME_OR_PASSWORD
    if client_id and client_id.strip():
        return LoginOutcome.CLIENT_ID_NOT_VALID
    return LoginOutcome.NOT_AUTHORIZED
