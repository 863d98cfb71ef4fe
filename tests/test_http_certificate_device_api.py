"""The sidecar's token-less device API, `/api/v1/{feature}...`, which the CoAP bridge calls for
devices identified by their DTLS client certificate (SPEC §6, X.509 over DTLS): the bridge's
service account in HTTP Basic, the certificate in X-Gatehouse-Client-Certificate (Base64 DER).

Against a real `gatehouse sidecar` linked to a real `gatehouse broker`, with `requests`. The
certificate header must count for nothing unless the service account's credentials are right,
and a certificate must be an X.509 device's; after that, each route is the token route.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from gatehouse.credentials import AccessToken, X509Certificate
from gatehouse.models import Device
from gatehouse.pki import create_self_signed
from gatehouse.registry import Registry

from .conftest import (
    RunningBroker,
    RunningSidecar,
    broker_and_sidecar,
)
from .devices import latest_telemetry, token_device, unique
from .mqtt_accounts import app_client
from .mqtt_client import next_on

WAIT = 20
RPC_LIMIT = 65_536  # SidecarSettings.max_rpc_payload_size


@dataclass
class Gatehouse:
    broker: RunningBroker
    sidecar: RunningSidecar

    def url(self, *path: str) -> str:
        return "/".join((self.sidecar.url, "api/v1", *path))

    def service_credentials(self, account: str = "coap") -> tuple[str, str]:
        with Registry.open(self.broker.data_dir) as registry:
            return registry.service_credentials(account)


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    with broker_and_sidecar(tmp_path_factory.mktemp("certificate-device-api")) as (broker, sidecar):
        yield Gatehouse(broker, sidecar)


@pytest.fixture(autouse=True)
def no_traceback_in_the_sidecar_log(gh):
    yield
    assert "Traceback" not in gh.sidecar.log()


def x509_device(gh: Gatehouse) -> tuple[Device, bytes]:
    """A new device whose credentials are a self-signed certificate: (device, DER)."""
    certificate, _ = create_self_signed(unique("x509"))
    der = certificate.public_bytes(Encoding.DER)
    with Registry.open(gh.broker.data_dir) as registry:
        device = registry.create_device(unique("x509"), credentials=X509Certificate(base64.b64encode(der).decode()))
    return device, der


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def as_bridge(gh: Gatehouse, der: bytes | None, *, credentials: tuple[str, str] | None = None) -> dict:
    """The headers the bridge sends for a device with certificate `der`."""
    headers = {"Authorization": basic(*(credentials or gh.service_credentials()))}
    if der is not None:
        headers["X-Gatehouse-Client-Certificate"] = base64.b64encode(der).decode()
    return headers


def test_telemetry_of_a_certificate_device(gh):
    device, der = x509_device(gh)
    response = requests.post(gh.url("telemetry"), data=b'{"temperature": 21.5}', headers=as_bridge(gh, der),
                             timeout=WAIT)
    assert (response.status_code, response.content) == (200, b"")
    assert latest_telemetry(gh.broker, device.id)["temperature"]["value"] == 21.5


def test_attributes_of_a_certificate_device_both_ways(gh):
    _, der = x509_device(gh)
    headers = as_bridge(gh, der)
    assert requests.post(gh.url("attributes"), data=b'{"fw": "v2"}', headers=headers, timeout=WAIT).status_code == 200
    response = requests.get(gh.url("attributes"), params={"clientKeys": "fw"}, headers=headers, timeout=WAIT)
    assert (response.status_code, response.json()) == (200, {"client": {"fw": "v2"}})


def test_claim_and_rpc_routes_of_a_certificate_device(gh):
    device, der = x509_device(gh)
    headers = as_bridge(gh, der)
    assert requests.post(gh.url("claim"), data=b'{"secretKey": "s"}', headers=headers, timeout=WAIT).status_code == 200
    # Server-side RPC: polled without a token, answered without one.
    app = app_client(gh.broker, [], f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/77", '{"method": "blink", "params": {}}')
    poll = requests.get(gh.url("rpc"), params={"timeout": 15_000}, headers=headers, timeout=WAIT + 15)
    assert (poll.status_code, poll.json()) == (200, {"id": 77, "method": "blink", "params": {}})
    reply = requests.post(gh.url("rpc", "77"), data=b'{"ok": true}', headers=headers, timeout=WAIT)
    assert reply.status_code == 200
    assert next_on(app, f"gatehouse/devices/{device.id}/rpc/response/77", WAIT).payload == b'{"ok": true}'
    # Client-side RPC with no application answering: the token route's 408.
    response = requests.post(gh.url("rpc"), params={"timeout": 100}, data=b'{"method": "time", "params": {}}',
                             headers=headers, timeout=WAIT)
    assert response.status_code == 408
    # The same body checks as the token routes.
    assert requests.post(gh.url("rpc", "abc"), data=b"{}", headers=headers, timeout=WAIT).status_code == 400


@pytest.mark.parametrize("headers", [
    pytest.param(lambda gh, der: {"X-Gatehouse-Client-Certificate": base64.b64encode(der).decode()},
                 id="no-authorization"),
    pytest.param(lambda gh, der: as_bridge(gh, der, credentials=(gh.service_credentials()[0], "wrong")),
                 id="wrong-password"),
    pytest.param(lambda gh, der: as_bridge(gh, der, credentials=gh.service_credentials("sidecar")),
                 id="another-service-account"),
    pytest.param(lambda gh, der: {**as_bridge(gh, der), "Authorization": "Bearer " + gh.service_credentials()[1]},
                 id="not-basic"),
])
def test_the_certificate_counts_only_with_the_bridges_credentials(gh, headers):
    device, der = x509_device(gh)
    # The body is not even parsed: 401 before a 400.
    for body in (b'{"temperature": 1}', b"not json"):
        response = requests.post(gh.url("telemetry"), data=body, headers=headers(gh, der), timeout=WAIT)
        assert (response.status_code, response.content) == (401, b"")
    assert latest_telemetry(gh.broker, device.id) == {}


def test_a_certificate_that_is_no_x509_devices_is_401(gh):
    unknown, _ = create_self_signed(unique("stranger"))
    _, token = token_device(gh.broker, "token")
    for headers in (as_bridge(gh, unknown.public_bytes(Encoding.DER)),
                    as_bridge(gh, token.encode()),  # a token device's token is no certificate
                    as_bridge(gh, None),
                    {**as_bridge(gh, None), "X-Gatehouse-Client-Certificate": "not base64!"}):
        response = requests.post(gh.url("telemetry"), data=b'{"t": 1}', headers=headers, timeout=WAIT)
        assert (response.status_code, response.content) == (401, b"")


def test_the_token_less_rpc_routes_have_the_rpc_payload_limit(gh):
    _, der = x509_device(gh)
    big = b'{"method": "m", "params": "' + b"x" * RPC_LIMIT + b'"}'
    assert requests.post(gh.url("rpc"), data=big, headers=as_bridge(gh, der), timeout=WAIT).status_code == 413
    # Checked before the credentials, as on the token routes.
    assert requests.post(gh.url("rpc", "5"), data=big, timeout=WAIT).status_code == 413
    # The general limit elsewhere.
    response = requests.post(gh.url("telemetry"), data=b'{"k": "' + b"x" * RPC_LIMIT + b'"}',
                             headers=as_bridge(gh, der), timeout=WAIT)
    assert response.status_code == 200


def test_token_routes_and_provisioning_keep_their_paths(gh):
    device, token = token_device(gh.broker, "token")
    assert requests.post(gh.url(token, "telemetry"), data=b'{"t": 2}', timeout=WAIT).status_code == 200
    assert latest_telemetry(gh.broker, device.id)["t"]["value"] == 2
    # A device whose token is a feature's name is still a token device (as the bridge reads it).
    with Registry.open(gh.broker.data_dir) as registry:
        registry.create_device(unique("token-named-rpc"), credentials=AccessToken("rpc"))
    assert requests.post(gh.url("rpc", "attributes"), data=b'{"a": 1}', timeout=WAIT).status_code == 200
    response = requests.post(gh.url("provision"), json={"deviceName": unique("p"), "provisionDeviceKey": "nope",
                                                        "provisionDeviceSecret": "nope"}, timeout=WAIT)
    assert response.status_code == 200
    assert response.json()["status"] == "NOT_FOUND"
