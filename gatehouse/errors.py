"""Errors the library raises for bad input; transports turn them into their own codes."""


class GatehouseError(Exception):
    """Base of the errors meant for the caller; the message is safe to show."""


class ValidationError(GatehouseError, ValueError):
    """Input that breaks a rule (duplicate name, malformed certificate, ...); nothing was stored.
    `field` names the input it concerns, when one does, for forms that show the message next
    to it: "name", "profile", "credentials", "provision_key", "provision_secret",
    "ca_certificate", "cn_regex", "username", "password", "mqtt_topics",
    "mqtt_telemetry_topic", "mqtt_attributes_topic", "mqtt_attributes_subscribe_topic"."""

    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field


class NotFoundError(GatehouseError, LookupError):
    """The named profile, device or user does not exist."""


class StoreBusy(Exception):
    """The database's write lock is held elsewhere (at once, for a registry that never waits:
    Registry.never_wait): nothing was done, and the same work may be tried again."""


class StoreUnavailable(Exception):
    """The database cannot be reached (stopped, restarting, network down): nothing of the failed
    call was stored, and the transports answer "server unavailable" until it is back."""


# What every transport answers "server unavailable" for (MQTT CONNACK 0x03 / 0x88, HTTP 503,
# CoAP 5.03): the database out of reach, or its write lock held elsewhere for longer than a write
# waits. Either way nothing of the failed call was stored and the same request may be sent again,
# so the device is told to retry rather than that it did something wrong.
SERVER_UNAVAILABLE_ERRORS = (StoreUnavailable, StoreBusy)


def is_server_unavailable(error: BaseException) -> bool:
    """Whether `error` means "try again later" to a device (SERVER_UNAVAILABLE_ERRORS)."""
    return isinstance(error, SERVER_UNAVAILABLE_ERRORS)
