"""Errors the library raises for bad input; transports turn them into their own codes."""


class GatehouseError(Exception):
    """Base of the errors meant for the caller; the message is safe to show."""


class ValidationError(GatehouseError, ValueError):
    """Input that breaks a rule (duplicate name, malformed certificate, ...); nothing was stored."""


class NotFoundError(GatehouseError, LookupError):
    """The named profile, device or user does not exist."""
