"""What applications and service accounts publish in the application namespace
(`gatehouse/devices/...`, gatehouse.application_namespace): shared attribute updates, RPC calls
to devices and replies to the devices' own RPC requests, delivered to a device connected here or
else handed to the service accounts; and, from a service account, an HTTP or CoAP device's data,
fanned out to the applications.
"""
from __future__ import annotations

import logging

from amqtt.session import Session

from gatehouse.application_namespace import (
    ApplicationAction,
    attributes_message,
    classify_application_publish,
    device_data_device,
    device_topic,
    rpc_request_message,
)
from gatehouse.errors import SERVER_UNAVAILABLE_ERRORS
from gatehouse.models import AttributeScope
from gatehouse.payloads import PayloadError, json_bytes, parse_attributes, parse_json, parse_rpc_request
from gatehouse.registry import DeviceDataWrite

from .connections import Connections
from .interfaces import MessageProperties, PublishVerdict
from .registry_worker import RegistryWorker
from .session_state import CLIENT_RPC_REPLIES, ROLE, ROLE_SERVICE, ProfileTransports
from .topic_acl import push_target, reply_qos
from .topics import SubscriptionKind

log = logging.getLogger(__name__)


class ApplicationMessages:
    def __init__(self, worker: RegistryWorker, connections: Connections, transports: ProfileTransports):
        self._worker = worker
        self._connections = connections
        self._transports = transports

    async def process(self, sender: Session, topic: str, payload: bytes,
                      properties: MessageProperties | None) -> PublishVerdict:
        if sender.attributes.get(ROLE) == ROLE_SERVICE and device_data_device(topic) is not None:
            # an HTTP or CoAP device's data, already stored
            await self._connections.republish_raw(topic, payload, properties)
            return PublishVerdict.ACK
        return await self._to_device(sender, topic, payload, properties)

    async def _to_device(self, sender: Session, topic: str, payload: bytes,
                         properties: MessageProperties | None) -> PublishVerdict:
        """An application (or a service account) speaks to a device. A device connected here
        gets it at once; the service accounts get what may be for a device of theirs (HTTP and
        CoAP devices wait for it in long polls)."""
        publish = classify_application_publish(topic)
        if publish is None:
            return PublishVerdict.ACK
        connections = self._connections
        target = connections.devices.get(publish.device_id)
        if publish.action is ApplicationAction.SHARED_ATTRIBUTES:
            # A service account has stored the change itself: storing it again here could put
            # an older value back over a newer one it has stored since.
            update = await self._update_shared_attributes(publish.device_id, target, payload, properties,
                                                          store=sender.attributes.get(ROLE) != ROLE_SERVICE)
            if update is not None:
                self._to_services(sender, topic, json_bytes(update), properties)
        elif publish.action is ApplicationAction.RPC_CALL:
            rpc = parse_rpc_request(payload)
            if isinstance(rpc, PayloadError):
                log.info("application RPC to %s ignored: %s", publish.device_id, rpc.message)
                return PublishVerdict.ACK
            call = json_bytes(rpc_request_message(rpc.method, rpc.params))
            push = self._push_target(target, SubscriptionKind.RPC_REQUESTS) if target is not None else None
            if push is not None:
                connections.send(target, f"{push[0]}{publish.request_id}", call, push[1], properties, kind="rpc_call")
            elif not self._to_services(sender, topic, call, properties):
                await connections.republish(device_topic(publish.device_id, "rpc", "response", publish.request_id),
                                            {"error": "Device is not connected or not subscribed to RPC"}, properties)
        elif target is not None:  # RPC_REPLY to the device's client-side RPC
            replies = target.attributes.get(CLIENT_RPC_REPLIES, {})
            reply_topic = replies.pop(publish.request_id, f"v1/devices/me/rpc/response/{publish.request_id}")
            connections.send(target, reply_topic, payload, reply_qos(target, reply_topic), properties, kind="rpc_reply")
        else:
            self._to_services(sender, topic, payload, properties)
        return PublishVerdict.ACK

    def _to_services(self, sender: Session, topic: str, payload: bytes, properties: MessageProperties | None) -> bool:
        """Hand a message for a device to the service accounts (not back to the one that sent
        it); False if none is connected."""
        services = [s for s in self._connections.services.values() if s is not sender]
        for service in services:
            self._connections.send(service, topic, payload, 1, properties)
        return bool(services)

    def _push_target(self, target: Session, kind: SubscriptionKind) -> tuple[str, int] | None:
        return push_target(target, kind, self._transports.of(target))

    async def _update_shared_attributes(self, device_id: str, target: Session | None, payload: bytes,
                                        properties: MessageProperties | None, *, store: bool = True) -> dict | None:
        """Store (unless told not to) and push an update; returns it as devices are sent it, or
        None if it was not stored."""
        parsed = parse_json(payload)
        deleted = parsed.get("deleted") if isinstance(parsed, dict) and len(parsed) == 1 else None
        try:
            if isinstance(deleted, list) and all(isinstance(k, str) for k in deleted):
                if store:
                    await self._worker.write(DeviceDataWrite(device_id, deleted=tuple(deleted),
                                                             scope=AttributeScope.SHARED))
                update = {"deleted": deleted}
            else:
                entries = parse_attributes(payload)
                if isinstance(entries, PayloadError):
                    log.info("shared attributes for %s ignored: %s", device_id, entries.message)
                    return None
                if store:
                    await self._worker.write(DeviceDataWrite(device_id, attributes=entries, scope=AttributeScope.SHARED))
                update = attributes_message(entries)
        except SERVER_UNAVAILABLE_ERRORS:
            raise  # not stored, so not acknowledged either (GatehousePlugin.process_publish)
        except Exception as e:  # an unknown device id, most likely
            log.info("shared attributes for %s not stored: %s", device_id, e)
            return None
        push = self._push_target(target, SubscriptionKind.ATTRIBUTE_UPDATES) if target is not None else None
        if push is not None:  # pushed only to devices subscribed to attribute updates
            self._connections.send(target, push[0], json_bytes(update), push[1], properties, kind="attributes_update")
        return update
