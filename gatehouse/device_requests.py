"""What a device asks of Gatehouse, whatever the transport it came by (MQTT, HTTP, CoAP).

Each function here reads a device's request and decides what it means: what to store, what the
applications are told, what the answer is. The transports do the I/O around it (the broker on
its event loop, the sidecar on its threads, the CoAP bridge through the sidecar) and map the
answer to their own codes: an MQTT reason code, an HTTP status, a CoAP code.
"""
from __future__ import annotations

from dataclasses import dataclass

from .application_namespace import attributes_message, telemetry_message
from .metrics import NO_PROFILE, PROVISION_INVALID, provision_strategy
from .payloads import DEFAULT_MAX_BYTES, PayloadError, TelemetryRecord, parse_attributes, parse_json, parse_telemetry
from .provisioning import ProvisionRequest, ProvisionRequestError, ProvisionResult, ProvisionStatus
from .registry import DeviceDataWrite, Registry

# The device API's features: /api/v1/{token}/{feature} over HTTP and CoAP, v1/devices/me/... over
# MQTT. A token equal to one of them cannot be told from a token-less request's path.
DEVICE_API_FEATURES = ("telemetry", "attributes", "rpc", "claim", "provision")

PROVISIONED_EVENT = "provisioned"  # told to the applications when a device was provisioned


@dataclass(frozen=True)
class DataUpload:
    """A device's telemetry or attributes, accepted: what to store, then (once committed) what
    its application topic `gatehouse/devices/{id}/{topic}` is told."""

    write: DeviceDataWrite
    topic: str  # "telemetry" or "attributes"
    message: object


def telemetry_upload(device_id: str, payload: bytes | str, *, now: int,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> DataUpload | PayloadError:
    """Records without a timestamp get `now`, one server time for the stored and the published copy."""
    records = parse_telemetry(payload, max_bytes=max_bytes)
    if isinstance(records, PayloadError):
        return records
    records = [TelemetryRecord(now if r.ts is None else r.ts, r.values) for r in records]
    return DataUpload(DeviceDataWrite(device_id, telemetry=tuple(records)), "telemetry", telemetry_message(records))


def attributes_upload(device_id: str, payload: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> DataUpload | PayloadError:
    entries = parse_attributes(payload, max_bytes=max_bytes)
    if isinstance(entries, PayloadError):
        return entries
    return DataUpload(DeviceDataWrite(device_id, attributes=entries), "attributes", attributes_message(entries))


@dataclass(frozen=True)
class ProvisionAnswer:
    """The outcome of a provisioning request: ThingsBoard's result, or why the request could not
    even be processed (`refused`: not JSON, or not a provisioning request, SPEC §3.6)."""

    result: ProvisionResult | None = None
    refused: PayloadError | ProvisionRequestError | None = None

    @property
    def succeeded(self) -> bool:
        return self.result is not None and self.result.status is ProvisionStatus.SUCCESS

    @property
    def why_refused(self) -> str | None:
        """What to tell a device whose request was refused (safe to show: never a traceback)."""
        if isinstance(self.refused, PayloadError):
            return self.refused.message
        return None if self.refused is None else str(self.refused)

    @property
    def metric_labels(self) -> tuple[str, str]:
        """(strategy, outcome) of gatehouse_provisioning_requests."""
        if self.result is None:
            return NO_PROFILE, PROVISION_INVALID
        return provision_strategy(self.result), self.result.status.value


def provision(registry: Registry, payload: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES,
              transport: str | None = None, remote_address: str | None = None) -> ProvisionAnswer:
    """A provisioning request (`{"deviceName", "provisionDeviceKey", ...}`), run in one write
    transaction of `registry`; called as a registry write (worker.call_write(provision, ...))."""
    parsed = parse_json(payload, max_bytes=max_bytes)
    if isinstance(parsed, PayloadError):
        return ProvisionAnswer(refused=parsed)
    try:
        return ProvisionAnswer(registry.provision(ProvisionRequest.from_json(parsed), transport=transport,
                                                  remote_address=remote_address))
    except ProvisionRequestError as e:
        return ProvisionAnswer(refused=e)
