"""Test data for the broker tests: unique names (the broker fixtures are shared between tests)
and token devices in a running broker's registry."""
from __future__ import annotations

import uuid

from gatehouse.credentials import AccessToken
from gatehouse.models import Device
from gatehouse.registry import Registry


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def token_device(broker, prefix: str = "dev") -> tuple[Device, str]:
    """A new device with a generated access token in `broker`'s registry: (device, token)."""
    token = unique("TOKEN")
    with Registry.open(broker.data_dir) as registry:
        device = registry.create_device(unique(prefix), credentials=AccessToken(token))
    return device, token


def latest_telemetry(broker, device_id: str) -> dict:
    """The device's latest telemetry, {key: {"ts", "value"}}, from `broker`'s registry."""
    with Registry.open(broker.data_dir) as registry:
        return registry.latest_telemetry(device_id)
