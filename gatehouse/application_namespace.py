"""Gatehouse's per-device MQTT namespace for backend applications (DESIGN.md "Application
topics"): where device data is published, what applications may send to devices, and the JSON
every transport publishes there, so that an application cannot tell an MQTT device's data from
an HTTP or CoAP device's.

    device -> applications   gatehouse/devices/{id}/telemetry | attributes | events
                             gatehouse/devices/{id}/rpc/request/{n}   (client-side RPC)
                             gatehouse/devices/{id}/rpc/response/{n}  (answer to a server-side RPC)
    applications -> device   gatehouse/devices/{id}/attributes/shared
                             gatehouse/devices/{id}/rpc/call/{n}      (server-side RPC)
                             gatehouse/devices/{id}/rpc/reply/{n}     (answer to a client-side RPC)

Service accounts (the sidecar) publish the first group for their devices, and receive the
second group from the broker for devices that are not connected over MQTT.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .payloads import KvEntry, TelemetryRecord, entry_to_json_value

APPLICATION_ROOT = "gatehouse/devices"


def device_topic(device_id: str, *parts: object) -> str:
    """`gatehouse/devices/{deviceId}/...`"""
    return "/".join((APPLICATION_ROOT, device_id, *map(str, parts)))


def is_application_filter(topic_filter: str) -> bool:
    """Applications may subscribe anywhere below gatehouse/devices, and nowhere else."""
    return topic_filter in ("gatehouse/#", f"{APPLICATION_ROOT}/#") or topic_filter.startswith(f"{APPLICATION_ROOT}/")


class ApplicationAction(enum.Enum):
    SHARED_ATTRIBUTES = "SHARED_ATTRIBUTES"  # .../attributes/shared
    RPC_CALL = "RPC_CALL"  # .../rpc/call/{id}: server-side RPC to the device
    RPC_REPLY = "RPC_REPLY"  # .../rpc/reply/{id}: answer to the device's client-side RPC


@dataclass(frozen=True)
class ApplicationPublish:
    action: ApplicationAction
    device_id: str
    request_id: int | None = None


_APPLICATION_PUBLISH = re.compile(
    r"gatehouse/devices/(?P<device>[^/+#]+)/(?:(?P<shared>attributes/shared)|rpc/(?P<kind>call|reply)/(?P<id>\d{1,9}))")


def classify_application_publish(topic: str) -> ApplicationPublish | None:
    """An application's message to a device, or None."""
    match = _APPLICATION_PUBLISH.fullmatch(topic)
    if match is None:
        return None
    if match["shared"]:
        return ApplicationPublish(ApplicationAction.SHARED_ATTRIBUTES, match["device"])
    action = ApplicationAction.RPC_CALL if match["kind"] == "call" else ApplicationAction.RPC_REPLY
    return ApplicationPublish(action, match["device"], int(match["id"]))


_DEVICE_DATA = re.compile(
    r"gatehouse/devices/(?P<device>[^/+#]+)/(?:telemetry|attributes|events|rpc/(?:request|response)/\d{1,9})")


def device_data_device(topic: str) -> str | None:
    """The device a device-to-application topic is about (what a service account may publish
    for its devices), or None if `topic` is not one."""
    match = _DEVICE_DATA.fullmatch(topic)
    return match["device"] if match else None


# --- the messages ---------------------------------------------------------------------------

def telemetry_message(records: Iterable[TelemetryRecord]) -> list[dict]:
    """[{"ts": ..., "values": {...}}, ...]; every record has its (server or device) time."""
    return [{"ts": r.ts, "values": {e.key: entry_to_json_value(e) for e in r.values}} for r in records]


def attributes_message(entries: Iterable[KvEntry]) -> dict:
    return {e.key: entry_to_json_value(e) for e in entries}


def event_message(event: str, ts: int) -> dict:
    """`connected`, `disconnected`, `provisioned`."""
    return {"event": event, "ts": ts}


def rpc_request_message(method: str, params: object) -> dict:
    return {"method": method, "params": params}
