"""ThingsBoard's save-time rules that the registry enforces before or around the store: names,
the messages of the uniqueness rules, sort keys."""
from __future__ import annotations

import json

from ..errors import ValidationError
from ..models import ProvisionType, java_trim
from ..storage import IntegrityError

DEFAULT_PROFILE_NAME = "default"
DEFAULT_CN_REGEX = "(.*)"
KEY_SECRET_STRATEGIES = (ProvisionType.ALLOW_CREATE_NEW_DEVICES, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES)

# The uniqueness rules, keyed by the constraint the store reports: ThingsBoard's message for each,
# and the input it concerns (ValidationError.field).
_CONSTRAINTS = {
    "device_profile.name": ("Device profile with such name already exists!", "name"),
    "device_profile.provision_device_key": ("Device profile with such provision device key already exists!",
                                            "provision_key"),
    "device.name": ("Device with such name already exists!", "name"),
    "device_credentials.lookup_digest": ("Device credentials are already assigned to another device!", "credentials"),
    "admin_user.username": ("User with such username already exists!", "username"),
}


def integrity_error(error: IntegrityError) -> ValidationError:
    message, field = _CONSTRAINTS.get(error.constraint, (f"Constraint violated: {error.constraint}", None))
    return ValidationError(message, field=field)


def checked_name(name: str | None, what: str) -> str:
    """ThingsBoard's name rules (DataValidator.validateString), after trimming."""
    name = java_trim(name or "")
    if not name:
        raise ValidationError(f"{what} name should be specified!", field="name")
    if "\x00" in name:
        raise ValidationError(f"{what} name should not contain 0x00 symbol!", field="name")
    return name


def profile_name(name: str | None) -> str:
    return checked_name(name, "Device profile")


def device_name(name: str | None) -> str:
    name = checked_name(name, "Device")
    if len(name) > 255:
        raise ValidationError("Device name should be at most 255 characters long", field="name")
    return name


def check_order(order_by: str, allowed: tuple[str, ...]) -> None:
    if order_by not in allowed:
        raise ValidationError(f"Unsupported sort property: {order_by!r} (supported: {', '.join(allowed)})")


def info_json(additional_info: dict | None) -> str:
    return json.dumps(additional_info) if additional_info else "{}"  # most devices have none: no encoder
