"""Sessions belong to identities, not to client ids: regression tests for the take-overs found
by trying the broker as a hostile client would (docs/security.md#sessions-belong-to-identities).

Against a real broker with paho (MQTT 3.1.1 and 5) and raw sockets (exact CONNACK bytes):
1. a login that proves another identity (or nothing: `provision`) never resumes someone else's
   persistent session, nor receives what was queued for it;
2. nor disconnects a live connection or deletes its session;
3. a provisioning login never resets its address's failed-login count;
4. a take-over by the same identity leaves one "disconnected" and one "connected" event, and
   server-to-device traffic follows the new connection.
The attack matrix (every kind of intruder against every kind of victim) is
tests/test_session_takeover_matrix.py; the log flood is in tests/test_logs.py.
"""
from __future__ import annotations

import json

import pytest

from gatehouse.registry import Registry

from .conftest import NO_BLOCKING, module_broker
from .devices import token_device, unique
from .mqtt_client import (
    RawClient,
    connack,
    connect,
    connect5,
    connect_packet,
    next_on,
    raw_login,
    wait_until,
)

ACCEPTED, SERVER_UNAVAILABLE = 0x00, 0x03
TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"
RPC_REQUESTS = "v1/devices/me/rpc/request/+"
SESSION_EXPIRY = 300
PROTOCOLS = ["mqtt311", "mqtt5"]


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    with module_broker(tmp_path_factory.mktemp("sessions"), *NO_BLOCKING) as running:
        yield running


def mqtt(protocol: str, port: int, client_id: str, username: str | None = None, password: str | None = None, *,
         persistent: bool = False):
    """A paho client of `protocol`; persistent: clean session 0 (MQTT 5: clean start 0 and a
    Session Expiry Interval)."""
    if protocol == "mqtt5":
        return connect5(port, client_id, username, password, clean_start=not persistent,
                        session_expiry=SESSION_EXPIRY if persistent else None)
    return connect(port, client_id, username, password, clean_session=not persistent)




def application(broker, *, protocol: str = "mqtt311", client_id: str | None = None, persistent: bool = False):
    with Registry.open(broker.data_dir) as r:
        username, password = r.create_application(unique("app"))
    client = mqtt(protocol, broker.mqtt_port, client_id or unique("app-cid"), username, password,
                  persistent=persistent)
    assert client.return_code == 0
    return client, (username, password)


def events(app, device_id: str, count: int, timeout: float = 5) -> list[str]:
    """The next `count` connection events of a device, as an application sees them."""
    return [json.loads(next_on(app, f"gatehouse/devices/{device_id}/events", timeout).payload)["event"]
            for _ in range(count)]


def rpc(app, device_id: str, request_id: int, method: str = "ping") -> None:
    assert app.publish(f"gatehouse/devices/{device_id}/rpc/call/{request_id}",
                       json.dumps({"method": method, "params": {}}))


# --- 1. resuming someone else's persistent session ---------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("intruder", ["provision", "device token"])
def test_another_identity_never_resumes_an_applications_session_nor_gets_its_queued_messages(gh, protocol,
                                                                                             intruder):
    client_id = unique("app1-cid")
    app, (username, password) = application(gh, protocol=protocol, client_id=client_id, persistent=True)
    assert [c.value for c in app.subscribe("gatehouse/devices/#", 1)] == [1]
    app.close()
    device, token = token_device(gh)
    sender = connect(gh.mqtt_port, unique("sender"), token)
    assert sender.publish(TELEMETRY, '{"queued": 1}')
    sender.close()

    intruder_login = "provision" if intruder == "provision" else token_device(gh)[1]
    thief = mqtt(protocol, gh.mqtt_port, client_id, intruder_login, persistent=True)
    assert thief.return_code == 0
    assert not thief.session_present, "the intruder was given the application's session"
    assert thief.no_message(1), "the intruder was sent the application's messages"
    thief.close()

    # The owner comes back to its session and what was queued for it.
    owner = mqtt(protocol, gh.mqtt_port, client_id, username, password, persistent=True)
    assert owner.return_code == 0 and owner.session_present
    assert json.loads(next_on(owner, f"gatehouse/devices/{device.id}/telemetry").payload)[0]["values"] == {
        "queued": 1}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_device_using_another_devices_client_id_gets_none_of_its_rpcs_or_attribute_updates(gh, protocol):
    client_id = unique("shared-A")
    device_a, token_a = token_device(gh, "dev-a")
    _device_b, token_b = token_device(gh, "dev-b")
    a = mqtt(protocol, gh.mqtt_port, client_id, token_a, persistent=True)
    a.subscribe(ATTRIBUTES, 1)
    a.subscribe(RPC_REQUESTS, 1)
    a.close()

    b = mqtt(protocol, gh.mqtt_port, client_id, token_b, persistent=True)
    assert b.return_code == 0 and not b.session_present
    app, _ = application(gh)
    app.subscribe(f"gatehouse/devices/{device_a.id}/rpc/response/+", 1)
    rpc(app, device_a.id, 1)
    assert app.publish(f"gatehouse/devices/{device_a.id}/attributes/shared", '{"secret": 1}')
    assert b.no_message(1), "device B received device A's RPC or attribute update"
    # A is not connected: the application is told so, once.
    answer = next_on(app, f"gatehouse/devices/{device_a.id}/rpc/response/1")
    assert "not connected" in json.loads(answer.payload)["error"]

    # A's session is still A's: it resumes it, and its subscriptions push again.
    a = mqtt(protocol, gh.mqtt_port, client_id, token_a, persistent=True)
    assert a.return_code == 0 and a.session_present
    rpc(app, device_a.id, 2)
    assert next_on(a, "v1/devices/me/rpc/request/2")
    assert b.no_message(0.5)


# --- 2. disconnecting someone else -------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("victim_kind", ["device", "application"])
def test_a_provisioning_login_with_a_victims_client_id_neither_disconnects_it_nor_deletes_its_session(
        gh, protocol, victim_kind):
    client_id = unique("victim")
    if victim_kind == "device":
        device, token = token_device(gh)
        victim = mqtt(protocol, gh.mqtt_port, client_id, token)
        victim.subscribe(ATTRIBUTES, 1)
        app, _ = application(gh)
    else:
        victim, _ = application(gh, protocol=protocol, client_id=client_id)
        victim.subscribe("gatehouse/devices/+/telemetry", 1)
        device, token = token_device(gh)
    for clean in (True, False):
        code, intruder = raw_login(gh.mqtt_port, client_id, "provision", clean_session=clean)
        assert code == connack(ACCEPTED), code
        intruder.close()
    if protocol == "mqtt5":
        intruder = connect5(gh.mqtt_port, client_id, "provision")
        assert intruder.return_code == 0
        intruder.close()
    assert not victim.disconnected.wait(0.5), "the victim was disconnected"

    # Its subscription is intact: it is still sent what it subscribed to.
    if victim_kind == "device":
        assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"k": 1}')
        assert json.loads(next_on(victim, ATTRIBUTES).payload) == {"k": 1}
    else:
        sender = connect(gh.mqtt_port, unique("sender"), token)
        assert sender.publish(TELEMETRY, '{"t": 1}')
        assert next_on(victim, f"gatehouse/devices/{device.id}/telemetry")


def test_provisioning_logins_all_get_sessions_of_their_own_whatever_client_id_they_send(gh):
    client_id = unique("prov")
    first = connect(gh.mqtt_port, client_id, "provision")
    second = connect(gh.mqtt_port, client_id, "provision")
    assert first.return_code == second.return_code == 0
    assert not first.disconnected.wait(0.5)
    for client in (first, second):
        assert [c.value for c in client.subscribe("/provision/response", 1)] == [1]
    # Persistent sessions asked for are never kept: no later login finds one.
    code, raw = raw_login(gh.mqtt_port, client_id, "provision", clean_session=False)
    assert code == connack(ACCEPTED, session_present=False)
    raw.close()


# --- 3. the failed-login count ------------------------------------------------------------------

def test_provisioning_logins_never_reset_the_failed_login_count(broker_factory):
    broker = broker_factory("--max-failed-logins", "10", "--block-seconds", "60")
    refusals = []
    for attempt in range(36):
        if attempt % 8 == 7:
            code, raw = raw_login(broker.mqtt_port, unique("p"), "provision")
            raw.close()
        code, raw = raw_login(broker.mqtt_port, unique("guess"), f"wrong-token-{attempt}")
        refusals.append(code[3])
        raw.close()
    assert SERVER_UNAVAILABLE in refusals, "36 wrong tokens never blocked the address"
    assert refusals.index(SERVER_UNAVAILABLE) == 10, refusals  # the 11th attempt, as with no provisioning


def test_a_login_that_proved_a_secret_still_resets_the_count(broker_factory):
    broker = broker_factory("--max-failed-logins", "10", "--block-seconds", "60")
    _device, token = token_device(broker)
    for attempt in range(27):
        if attempt % 9 == 8:
            code, raw = raw_login(broker.mqtt_port, unique("ok"), token)
            assert code == connack(ACCEPTED)
            raw.close()
        code, raw = raw_login(broker.mqtt_port, unique("guess"), f"wrong-token-{attempt}")
        assert code[3] != SERVER_UNAVAILABLE, f"blocked at attempt {attempt}"
        raw.close()


# --- 4. take-over by the same identity -----------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("second_login", ["same client id, persistent", "same client id, clean",
                                          "another client id"])
def test_a_take_over_by_the_same_device_leaves_one_disconnected_and_one_connected_event(gh, protocol,
                                                                                       second_login):
    device, token = token_device(gh)
    app, _ = application(gh)
    app.subscribe(f"gatehouse/devices/{device.id}/#", 1)
    client_id = unique("cid")
    first = mqtt(protocol, gh.mqtt_port, client_id, token, persistent=True)
    first.subscribe(RPC_REQUESTS, 1)
    assert events(app, device.id, 1) == ["connected"]

    second = mqtt(protocol, gh.mqtt_port, unique("cid") if second_login == "another client id" else client_id,
                  token, persistent=second_login.endswith("persistent"))
    assert second.return_code == 0
    assert first.wait_disconnected(5)
    assert events(app, device.id, 2) == ["disconnected", "connected"]
    assert app.no_message(0.5), "more events than one take-over makes"

    # The device is connected: RPCs go to the new connection (subscribed anew or by its session).
    if second_login != "same client id, persistent":
        second.subscribe(RPC_REQUESTS, 1)
    rpc(app, device.id, 11)
    assert next_on(second, "v1/devices/me/rpc/request/11")
    second.close()
    assert events(app, device.id, 1) == ["disconnected"]
    rpc(app, device.id, 12)
    assert "not connected" in json.loads(next_on(app, f"gatehouse/devices/{device.id}/rpc/response/12").payload)[
        "error"]


def test_another_device_with_a_connected_devices_client_id_changes_nothing_of_the_first(gh):
    device_a, token_a = token_device(gh, "dev-a")
    device_b, token_b = token_device(gh, "dev-b")
    app, _ = application(gh)
    app.subscribe("gatehouse/devices/+/events", 1)
    client_id = unique("cid")
    a = connect(gh.mqtt_port, client_id, token_a, clean_session=False)
    a.subscribe(RPC_REQUESTS, 1)
    assert json.loads(next_on(app, f"gatehouse/devices/{device_a.id}/events").payload)["event"] == "connected"
    b = connect(gh.mqtt_port, client_id, token_b, clean_session=False)
    b.subscribe(RPC_REQUESTS, 1)
    assert json.loads(next_on(app, f"gatehouse/devices/{device_b.id}/events").payload)["event"] == "connected"
    assert not a.disconnected.wait(0.5)
    assert app.no_message(0.5), "a second device's login made events for the first"

    rpc(app, device_a.id, 21)
    rpc(app, device_b.id, 22)
    assert next_on(a, "v1/devices/me/rpc/request/21")
    assert next_on(b, "v1/devices/me/rpc/request/22")
    assert a.no_message(0.3) and b.no_message(0.3)
    with RawClient(gh.mqtt_port) as raw:  # the broker is still answering logins
        raw.send(connect_packet(unique("x"), token_a))
        assert raw.read(4) == connack(ACCEPTED)
    assert wait_until(lambda: a.disconnected.is_set(), 5)  # a new login of A's own does replace it
