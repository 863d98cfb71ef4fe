"""ThingsBoard's provisioning answers (SPEC §3): the fixed NOT_FOUND and FAILURE ones, the same
over every transport, and one request/answer exchange on an MQTT provision-only session (§9.1)."""
from __future__ import annotations

import json

from .devices import unique
from .mqtt_client import connect

PROVISION_REQUEST, PROVISION_RESPONSE = "/provision/request", "/provision/response"
NOT_FOUND_JSON = {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
FAILURE_JSON = {"errorMsg": "Failed to provision device!", "status": "FAILURE"}


def provision_client(broker, via: str = "username"):
    """A provision-only session entered by username `provision` or by client id `provision`."""
    if via == "username":
        client = connect(broker.mqtt_port, unique("prov"), "provision", "any-password")
    else:
        client = connect(broker.mqtt_port, "provision")
    assert client.return_code == 0
    return client


def provision(broker, request, via: str = "username", subscribe_qos: int | None = None):
    """One exchange on a fresh provisioning session; returns (response JSON, the message)."""
    client = provision_client(broker, via)
    if subscribe_qos is not None:
        assert [c.value for c in client.subscribe(PROVISION_RESPONSE, subscribe_qos)] == [subscribe_qos]
    body = request if isinstance(request, (bytes, str)) else json.dumps(request)
    assert client.publish(PROVISION_REQUEST, body)
    message = client.next_message(5)
    assert message.topic == PROVISION_RESPONSE
    return json.loads(message.payload), message
