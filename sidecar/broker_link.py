"""The sidecar's MQTT connection to the Gatehouse broker, as its service account.

Outbound, HTTP and CoAP devices' data goes to the same application topics as MQTT devices' data
(gatehouse.application_namespace), and the admin API's shared-attribute changes go to the broker
like an application's, to be pushed to MQTT devices. Inbound, the broker hands over what
applications send to devices that are not connected over MQTT; it lands in the mailboxes, where
HTTP long polls (and the CoAP bridge's observations) pick it up.

paho runs the connection in its own thread and reconnects by itself; publishing never blocks a
request. While the broker is unreachable, device data is still stored and acknowledged to the
device (the store is the record; the application topics are a live feed), and the loss is logged.
"""
from __future__ import annotations

import logging
import secrets
import threading

import orjson
import paho.mqtt.client as paho

from gatehouse.application_namespace import (
    ApplicationAction,
    classify_application_publish,
    device_topic,
    event_message,
    rpc_request_message,
)
from gatehouse.clock import now_ms
from gatehouse.payloads import json_bytes

from .mailboxes import DeviceMailboxes

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = "sidecar"
# What applications send to devices; the broker forwards it here for devices not on MQTT.
INBOUND_FILTERS = ("gatehouse/devices/+/attributes/shared", "gatehouse/devices/+/rpc/call/+",
                   "gatehouse/devices/+/rpc/reply/+")
# The broker takes no larger payload from any client (ThingsBoard's MQTT limit) and drops the
# connection of one that sends it; paho would then send it again after every reconnect.
MAX_PUBLISH_PAYLOAD = 65536


class BrokerLink:
    def __init__(self, host: str, port: int, username: str, password: str, mailboxes: DeviceMailboxes, *,
                 keepalive: int = 30):
        self.mailboxes = mailboxes
        self.connected = threading.Event()
        self._host, self._port, self._keepalive = host, port, keepalive
        # Not guessable, and different for every sidecar sharing the account (the broker keys
        # sessions by account and client id, so a guess would reach nothing anyway).
        self.client_id = f"gatehouse-sidecar-{secrets.token_hex(8)}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv311, clean_session=True)
        client.username_pw_set(username, password)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (and keep reconnecting); returns at once."""
        self._client.connect_async(self._host, self._port, self._keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self.connected.clear()
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the sidecar's service account: %s", reason_code)
            return
        client.subscribe([(topic_filter, 1) for topic_filter in INBOUND_FILTERS])
        self.connected.set()
        log.info("connected to the broker at %s:%s as client id %s", self._host, self._port, self.client_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("lost the broker connection (%s); reconnecting", reason_code)
        self.connected.clear()

    # --- inbound: applications -> HTTP and CoAP devices -----------------------------------------

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        publish = classify_application_publish(message.topic)
        if publish is None:
            return
        try:
            if publish.action is ApplicationAction.SHARED_ATTRIBUTES:
                update = orjson.loads(message.payload)
                if isinstance(update, dict):
                    self.mailboxes.shared_attributes_changed(publish.device_id, update)
            elif publish.action is ApplicationAction.RPC_CALL:
                call = orjson.loads(message.payload)
                if isinstance(call, dict):
                    self.mailboxes.rpc_call(publish.device_id, publish.request_id,
                                            rpc_request_message(call.get("method"), call.get("params")))
            else:
                self.mailboxes.rpc_reply(publish.device_id, publish.request_id, bytes(message.payload))
        except orjson.JSONDecodeError:
            log.info("ignored a malformed message on %s", message.topic)

    # --- outbound: devices -> applications ----------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1, without waiting; False if the broker is not connected (nothing is queued) or
        the payload is more than the broker takes (HTTP devices may send up to 50 MiB)."""
        if len(payload) > MAX_PUBLISH_PAYLOAD:
            log.warning("%s not published: %d bytes, the broker takes at most %d", topic, len(payload),
                        MAX_PUBLISH_PAYLOAD)
            return False
        if not self.connected.is_set():
            log.warning("broker not connected; %s not published", topic)
            return False
        return self._client.publish(topic, payload, qos=1).rc == paho.MQTT_ERR_SUCCESS

    def publish_json(self, device_id: str, parts: tuple, value) -> bool:
        return self.publish(device_topic(device_id, *parts), json_bytes(value))

    def publish_event(self, device_id: str, event: str) -> bool:
        return self.publish_json(device_id, ("events",), event_message(event, now_ms()))

    def rpc_expired(self, device_id: str, request_id: int) -> None:
        """A server-side RPC no HTTP or CoAP poll took: the application hears it timed out."""
        self.publish_json(device_id, ("rpc", "response", request_id),
                          {"error": "Device did not take the RPC request in time"})
