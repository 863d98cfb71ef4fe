"""Session takeover: an attack matrix against a real `gatehouse broker` and `gatehouse sidecar`,
with real MQTT clients (paho, MQTT 3.1.1 and MQTT 5) and no mocks.

An MQTT session belongs to the identity that made it (a device, an application account, a
service account), not to whoever sends its client id. For every cell of

    intruders  a provisioning login (username `provision`, no password); another device's access
               token; another device's MQTT basic credentials (user name and password only, so any
               client id is accepted); another application account; TLS without a certificate
               and without credentials
  x actions    resume the victim's persistent session while the victim is offline (clean session
               0; MQTT 5: Clean Start 0 with a Session Expiry Interval); replace the victim's live
               connection (clean session 0 while it is connected); a clean login with the
               victim's client id while it is connected
  x victims    a token device, a basic device, an X.509 device, an application account, the
               sidecar's own broker link (live actions only: it is always connected)

the victim keeps its connection, its stored session and what was queued for it; the intruder
receives nothing of the victim's; an intruder with valid credentials of its own is accepted with
session present = 0 (a fresh session); the TLS intruder is refused. MQTT 3.1.1 runs the whole
matrix; MQTT 5 runs it for the token device and the application victims.

What a victim receives, so that "nothing of the victim's" can be checked:
- an application (subscribed to gatehouse/devices/# at QoS 1, persistent session): device
  telemetry, which is queued while it is offline and delivered when it returns;
- a device (subscribed to shared-attribute updates and server-side RPC): what an application
  sends it. Pushes to an offline MQTT device are not queued, so the offline phase checks only
  that no intruder gets them, and the device's return checks session present = 1 and that its
  old subscriptions still get pushes without subscribing again;
- the sidecar link: HTTP devices' telemetry goes out through it and applications' RPCs to HTTP
  devices come in through it; after all the attempts both must still work.

Each test walks its whole matrix and reports every broken cell (victim, intruder, action,
protocol and what went wrong) at once. The cells of a test share nothing (each has its own
victim, intruder identity and client id), so they run in parallel threads: most of a cell is
waiting to see that an intruder receives nothing.
"""
from __future__ import annotations

import json
import queue
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from gatehouse import pki
from gatehouse.credentials import AccessToken, MqttBasic, X509Certificate
from gatehouse.data_dir import DataDir
from gatehouse.registry import Registry

from .conftest import NO_BLOCKING, RunningBroker, RunningSidecar, broker_and_sidecar
from .devices import unique
from .mqtt_client import TestClient as MqttClient
from .mqtt_client import connect, connect5, wait_until

MQTT311, MQTT5 = "3.1.1", "5"
SESSION_EXPIRY = 300  # seconds: an MQTT 5 session that outlives its connection

# Intruders
PROVISION, TOKEN, BASIC, APPLICATION, TLS_ANONYMOUS = (
    "provision login", "another device's token", "another device's basic credentials",
    "another application account", "TLS without certificate or credentials")
INTRUDERS = (PROVISION, TOKEN, BASIC, APPLICATION, TLS_ANONYMOUS)

# Actions
RESUME = "resume the persistent session while the victim is offline"
REPLACE = "persistent login while the victim is connected"
CLEAN = "clean login while the victim is connected"
ACTIONS = (RESUME, REPLACE, CLEAN)
LIVE_ACTIONS = (REPLACE, CLEAN)

# Victims
TOKEN_DEVICE, BASIC_DEVICE, X509_DEVICE = "token-device", "basic-device", "x509-device"
APPLICATION_VICTIM = "application"
DEVICE_VICTIMS = (TOKEN_DEVICE, BASIC_DEVICE, X509_DEVICE)

QUIET = 0.5  # seconds an intruder is watched after the last message it might wrongly get
SETTLE = 0.25  # seconds for the broker to handle a DISCONNECT before the next login
EXPECT = 3.0  # seconds to wait for a message that must arrive (they arrive in milliseconds)
SIDECAR_RECONNECT = 20.0  # seconds for a disconnected sidecar link to come back (paho retries after 1 s)
OLD_SIDECAR_CLIENT_ID = "gatehouse-sidecar"
SIDECAR_CLIENT_ID = re.compile(r"connected to the broker at \S+ as client id (\S+)")


# --- the broker and sidecar -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    """One broker and sidecar for the module; the TLS intruders' refused logins must not get
    the test's own address blocked."""
    with broker_and_sidecar(tmp_path_factory.mktemp("session-takeover"), *NO_BLOCKING) as running:
        yield running


# --- logins ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """How one identity logs in: where, and with what."""

    port: int
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None  # TLS when set
    cert: Path | None = None
    key: Path | None = None
    device_id: str | None = None  # of a device identity


def log_in(login: Login, client_id: str, protocol: str, *, persistent: bool) -> MqttClient:
    """A connection of `login`'s identity with `client_id`; `persistent`: MQTT 3.1.1 clean
    session 0, MQTT 5 Clean Start 0 with a Session Expiry Interval (else a clean session)."""
    tls = {"ca_cert": login.ca_cert, "cert": login.cert, "key": login.key}
    if protocol == MQTT5:
        return connect5(login.port, client_id, login.username, login.password, **tls, clean_start=not persistent,
                        session_expiry=SESSION_EXPIRY if persistent else None)
    return connect(login.port, client_id, login.username, login.password, **tls, clean_session=not persistent)


def connack_text(client: MqttClient) -> str:
    return "no CONNACK" if client.return_code is None else f"CONNACK {client.return_code:#04x}"


# --- identities -----------------------------------------------------------------------------------


def device_login(broker: RunningBroker, registry: Registry, kind: str, directory: Path | None = None) -> Login:
    """A new device of `kind` (token, basic with user name and password only, or X.509 with a
    certificate the development CA signed) and how it logs in."""
    name = unique(kind)
    if kind in (TOKEN_DEVICE, TOKEN):
        token = unique("TOKEN")
        device = registry.create_device(name, credentials=AccessToken(token))
        return Login(broker.mqtt_port, token, device_id=device.id)
    if kind in (BASIC_DEVICE, BASIC):
        # No client id in the credentials: the user name and password log in with any client id.
        user, password = unique("user"), unique("pw")
        device = registry.create_device(name, credentials=MqttBasic(None, user, password))
        return Login(broker.mqtt_port, user, password, device_id=device.id)
    assert kind == X509_DEVICE
    cert, key = pki.issue_device_certificate(pki.DevelopmentPki.in_directory(DataDir(broker.data_dir).pki), name,
                                             directory)
    device = registry.create_device(name, credentials=X509Certificate.parse(cert.read_text()))
    return Login(broker.mqtts_port, ca_cert=broker.ca_cert, cert=cert, key=key, device_id=device.id)


def application_login(broker: RunningBroker, registry: Registry) -> Login:
    username, password = registry.create_application(unique("app"))
    return Login(broker.mqtt_port, username, password)


def intruder_login(broker: RunningBroker, registry: Registry, kind: str, directory: Path) -> Login:
    if kind == PROVISION:
        return Login(broker.mqtt_port, "provision")  # no password: the credential-less provisioning login
    if kind == TLS_ANONYMOUS:
        return Login(broker.mqtts_port, ca_cert=broker.ca_cert)
    if kind == APPLICATION:
        return application_login(broker, registry)
    return device_login(broker, registry, kind, directory)


# --- what a victim receives -----------------------------------------------------------------------


def awaited(client: MqttClient, expected: dict[str, str], timeout: float = EXPECT) -> list[str]:
    """Wait until `client` got a message on each topic of `expected` whose payload contains that
    topic's tag, or its connection is gone; the ones that did not come. Other messages are
    skipped: a victim subscribed to gatehouse/devices/# sees the whole broker's traffic."""
    missing = dict(expected)
    deadline = time.monotonic() + timeout
    while missing and (remaining := deadline - time.monotonic()) > 0:
        try:
            message = client.next_message(timeout=min(remaining, 0.1))
        except queue.Empty:
            if client.disconnected.is_set():
                break  # nothing more can come
            continue
        tag = missing.get(message.topic)
        if tag is not None and tag.encode() in message.payload:
            del missing[message.topic]
    return [f"{topic} ({tag})" for topic, tag in missing.items()]


def leaked(client: MqttClient) -> str | None:
    """What an intruder received, summed up; None if nothing. Intruders never subscribe, so
    anything they get is someone else's."""
    got = []
    while True:
        try:
            got.append(client.messages.get_nowait())
        except queue.Empty:
            break
    if not got:
        return None
    shown = ", ".join(f"{m.topic} {m.payload[:60]!r}" for m in got[:3])
    return f"{len(got)} message(s): {shown}{', ...' if len(got) > 3 else ''}"


class Probe:
    """Sends a victim what it receives, through a helper connection of its own (an application,
    or a telemetry device). A helper the broker disconnected is reported in `problems` and
    replaced, so that the cell can go on."""

    queued_while_offline: bool

    def __init__(self, helper_login: Login):
        self.helper_login = helper_login
        self.helper = helper_connection(helper_login)
        self.problems: list[str] = []

    def publish(self, topic: str, payload: dict, what: str) -> None:
        if self.helper.disconnected.is_set():
            self.helper = helper_connection(self.helper_login)
        if not self.helper.publish(topic, json.dumps(payload), timeout=EXPECT):
            self.problems.append(f"{what} got no PUBACK: the broker closed the sender's connection")


class DeviceProbe(Probe):
    """What an application sends a device victim: a shared-attribute update and a server-side
    RPC, each tagged. Not queued while the device is offline."""

    queued_while_offline = False
    FILTERS = ("v1/devices/me/attributes", "v1/devices/me/rpc/request/+")

    def __init__(self, device_id: str, application: Login):
        super().__init__(application)
        self.device_id = device_id
        self._rpc_ids = iter(range(1, 1000))

    def subscribe(self, victim: MqttClient) -> None:
        for topic_filter in self.FILTERS:
            granted = [getattr(code, "value", code) for code in victim.subscribe(topic_filter, 1)]
            assert granted == [1], f"victim's subscription to {topic_filter} refused: {granted}"

    def send(self, tag: str) -> dict[str, str]:
        rpc_id = next(self._rpc_ids)
        self.publish(f"gatehouse/devices/{self.device_id}/attributes/shared", {"probe": tag},
                     f"an application's shared-attribute update for the victim ({tag})")
        self.publish(f"gatehouse/devices/{self.device_id}/rpc/call/{rpc_id}",
                     {"method": "probe", "params": {"tag": tag}}, f"an application's RPC to the victim ({tag})")
        return {"v1/devices/me/attributes": tag, f"v1/devices/me/rpc/request/{rpc_id}": tag}


class ApplicationProbe(Probe):
    """What an application victim receives: a device's telemetry, tagged; queued for it while
    it is offline."""

    queued_while_offline = True

    def __init__(self, feeder: Login):
        super().__init__(feeder)
        self.feeder_id = feeder.device_id

    def subscribe(self, victim: MqttClient) -> None:
        granted = [getattr(code, "value", code) for code in victim.subscribe("gatehouse/devices/#", 1)]
        assert granted == [1], f"victim's subscription to gatehouse/devices/# refused: {granted}"

    def send(self, tag: str) -> dict[str, str]:
        # The PUBACK comes once the broker has delivered or queued the republished copy.
        self.publish("v1/devices/me/telemetry", {"probe": tag}, f"a device's telemetry ({tag})")
        return {f"gatehouse/devices/{self.feeder_id}/telemetry": tag}


def helper_connection(login: Login) -> MqttClient:
    client = connect(login.port, unique("helper"), login.username, login.password)
    assert client.return_code == 0, f"helper login refused: {connack_text(client)}"
    return client


# --- one cell of the matrix -----------------------------------------------------------------------


@dataclass
class Cell:
    """One intruder, one action, against one victim; collects what went wrong."""

    victim_kind: str
    intruder_kind: str
    action: str
    protocol: str
    victim: Login
    intruder: Login
    probe: DeviceProbe | ApplicationProbe
    # Whether a resumed device session still gets pushes without subscribing again (checked
    # once per test without any intruder); if not, the cell subscribes again so that what it
    # reports is the intruder's doing.
    resubscribe_on_return: bool = False
    failures: list[str] = field(default_factory=list)
    opened: list[MqttClient] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"[{self.victim_kind} victim | {self.intruder_kind} intruder | {self.action} | MQTT {self.protocol}]"

    def fail(self, what: str) -> None:
        self.failures.append(f"{self.label} {what}")

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.fail(what)

    def send(self, tag: str) -> dict[str, str]:
        """What the probe sent the victim (topic -> tag); a sender the broker cut off is a failure."""
        sent = self.probe.send(tag)
        for problem in self.probe.problems:
            self.fail(problem)
        self.probe.problems.clear()
        return sent

    def open(self, login: Login, client_id: str, *, persistent: bool) -> MqttClient:
        client = log_in(login, client_id, self.protocol, persistent=persistent)
        self.opened.append(client)
        return client

    def close_all(self) -> None:
        for client in [*self.opened, self.probe.helper]:
            client.close()


def run_cell(cell: Cell) -> list[str]:
    client_id = unique(f"victim-{cell.victim_kind}")
    try:
        if cell.action == RESUME:
            attack_stored_session(cell, client_id)
        else:
            attack_live_connection(cell, client_id)
    except Exception as e:  # a setup step or an unexpected turn: report it with the cell
        here = [frame for frame in traceback.extract_tb(e.__traceback__) if frame.filename == __file__]
        cell.fail(f"stopped by {type(e).__name__}: {e} (line {here[-1].lineno if here else '?'} of this module)")
    finally:
        cell.close_all()
    if isinstance(cell.probe, ApplicationProbe):
        discard_session(cell, client_id)
    return cell.failures


def victim_connects(cell: Cell, client_id: str) -> MqttClient:
    """The victim's persistent session, subscribed to what it receives."""
    victim = cell.open(cell.victim, client_id, persistent=True)
    assert victim.return_code == 0, f"the victim's own login was refused: {connack_text(victim)}"
    cell.probe.subscribe(victim)
    return victim


def goes_offline(victim: MqttClient) -> None:
    """DISCONNECT: the persistent session stays behind, without a connection."""
    victim.close()
    time.sleep(SETTLE)


def intruder_logs_in(cell: Cell, client_id: str) -> MqttClient:
    """The intruder's login with the victim's client id, and what its CONNACK must be."""
    intruder = cell.open(cell.intruder, client_id, persistent=cell.action != CLEAN)
    for problem in connack_problems(cell.intruder_kind, intruder):
        cell.fail(problem)
    return intruder


def connack_problems(intruder_kind: str, intruder: MqttClient) -> list[str]:
    """The TLS intruder is refused (any nonzero CONNACK, or none); any other gets a fresh
    session: accepted, session present = 0."""
    if intruder_kind == TLS_ANONYMOUS:
        return [] if intruder.return_code != 0 else ["intruder was accepted (CONNACK 0x00)"]
    if intruder.return_code != 0:
        return [f"intruder refused with {connack_text(intruder)}: a valid login of another identity gets a fresh "
                "session"]
    if intruder.session_present:
        return ["intruder got session present = 1: it was handed the victim's session"]
    return []


def intruder_got_nothing(cell: Cell, intruder: MqttClient) -> None:
    """Nothing arrives for the intruder; a queued message would be sent right after its CONNACK,
    a routed one as soon as it is published, so a short watch suffices."""
    time.sleep(QUIET)
    got = leaked(intruder)
    cell.check(got is None, f"intruder received the victim's messages: {got}")


def victim_returns(cell: Cell, client_id: str, queued: dict[str, str]) -> None:
    """The victim comes back to its stored session: session present = 1, what was queued for it
    arrives, and (a device) its old subscriptions still get pushes."""
    victim = cell.open(cell.victim, client_id, persistent=True)
    if victim.return_code != 0:
        cell.fail(f"victim could not log in again: {connack_text(victim)}")
        return
    cell.check(victim.session_present is True,
               "victim came back to session present = 0: its stored session is gone")
    expected = dict(queued)
    if not cell.probe.queued_while_offline:
        if cell.resubscribe_on_return:
            cell.probe.subscribe(victim)
        expected.update(cell.send("back"))
    missing = awaited(victim, expected)
    cell.check(not missing, f"victim, back in its session, did not receive {missing}")


def attack_stored_session(cell: Cell, client_id: str) -> None:
    """The victim is offline with a stored session; the intruder tries to resume it."""
    victim = victim_connects(cell, client_id)
    goes_offline(victim)
    intruder = intruder_logs_in(cell, client_id)
    sent = cell.send("offline")  # applications: queued for the victim; devices: lost
    intruder_got_nothing(cell, intruder)
    goes_offline(intruder)
    victim_returns(cell, client_id, sent if cell.probe.queued_while_offline else {})


def attack_live_connection(cell: Cell, client_id: str) -> None:
    """The victim is connected; the intruder logs in with its client id (persistent or clean)."""
    victim = victim_connects(cell, client_id)
    intruder = intruder_logs_in(cell, client_id)
    missing = awaited(victim, cell.send("live"))
    cell.check(not victim.disconnected.is_set(), "victim's live connection was closed")
    cell.check(not missing, f"victim, while connected, did not receive {missing}")
    intruder_got_nothing(cell, intruder)
    goes_offline(intruder)
    # The victim's stored session is intact too.
    goes_offline(victim)
    queued = cell.send("stored") if cell.probe.queued_while_offline else {}
    victim_returns(cell, client_id, queued)


def discard_session(cell: Cell, client_id: str) -> None:
    """A clean login of the victim's own, so its gatehouse/devices/# session does not collect
    the rest of the module's traffic."""
    try:
        log_in(cell.victim, client_id, cell.protocol, persistent=False).close()
    except (OSError, TimeoutError):
        pass


# --- the device and application victims ------------------------------------------------------------


def resumed_device_session_gets_pushes(victim: Login, application: Login, protocol: str) -> bool:
    """No intruder: does a device that resumes its persistent session get pushes on the
    subscriptions it made before, without subscribing again?"""
    client_id = unique("baseline")
    probe = DeviceProbe(victim.device_id, application)
    try:
        first = log_in(victim, client_id, protocol, persistent=True)
        probe.subscribe(first)
        goes_offline(first)
        again = log_in(victim, client_id, protocol, persistent=True)
        try:
            return bool(again.session_present) and not awaited(again, probe.send("baseline"))
        finally:
            again.close()
    finally:
        probe.helper.close()


def plan_cells(broker: RunningBroker, victim_kind: str, protocol: str, directory: Path,
               application: Login) -> list[Cell]:
    """Every intruder x action, each against a victim of `victim_kind` of its own, with
    identities of its own; device victims are sent pushes by `application`."""
    cells = []
    with Registry.open(broker.data_dir) as registry:
        for intruder_kind in INTRUDERS:
            for action in ACTIONS:
                if victim_kind == APPLICATION_VICTIM:
                    victim = application_login(broker, registry)
                    probe = ApplicationProbe(device_login(broker, registry, TOKEN))
                else:
                    victim = device_login(broker, registry, victim_kind, directory)
                    probe = DeviceProbe(victim.device_id, application)
                cells.append(Cell(victim_kind, intruder_kind, action, protocol, victim,
                                  intruder_login(broker, registry, intruder_kind, directory), probe))
    return cells


def report(failures: list[str], attempts: int, what: str) -> str:
    return f"{len(failures)} failures in {attempts} {what}:\n" + "\n".join(failures)


VICTIM_CASES = [pytest.param(victim, protocol, id=f"{victim}-mqtt{protocol}")
                for protocol, victims in ((MQTT311, (*DEVICE_VICTIMS, APPLICATION_VICTIM)),
                                          (MQTT5, (TOKEN_DEVICE, APPLICATION_VICTIM)))
                for victim in victims]


@pytest.mark.parametrize(("victim_kind", "protocol"), VICTIM_CASES)
def test_no_other_identity_takes_over_the_victims_session(gh, tmp_path, victim_kind, protocol):
    broker, _sidecar = gh
    failures = []
    with Registry.open(broker.data_dir) as registry:
        application = application_login(broker, registry)  # pushes to device victims
        baseline_victim = (device_login(broker, registry, victim_kind, tmp_path) if victim_kind in DEVICE_VICTIMS
                           else None)
    resubscribe = False
    if baseline_victim is not None and not resumed_device_session_gets_pushes(baseline_victim, application, protocol):
        # Not an intruder's doing: reported once, and the cells subscribe again when the victim
        # returns, so that what they report is what the intruders did.
        failures.append(f"[{victim_kind} victim | no intruder | MQTT {protocol}] a device back in its persistent "
                        "session gets no pushes on its old subscriptions without subscribing again")
        resubscribe = True
    cells = plan_cells(broker, victim_kind, protocol, tmp_path, application)
    for cell in cells:
        cell.resubscribe_on_return = resubscribe
    with ThreadPoolExecutor(max_workers=len(cells)) as pool:
        for cell_failures in pool.map(run_cell, cells):
            failures.extend(cell_failures)
    assert not failures, report(failures, len(cells), f"attacks on a {victim_kind} victim")


# --- the sidecar's link ----------------------------------------------------------------------------


def sidecar_client_ids(sidecar: RunningSidecar) -> list[str]:
    """The client id the sidecar's link uses, as its log says, and the old fixed one; on code
    whose sidecar does not say, the old fixed one is the one it uses."""
    said = SIDECAR_CLIENT_ID.findall(sidecar.log())
    return list(dict.fromkeys([*said[-1:], OLD_SIDECAR_CLIENT_ID]))


def link_events(sidecar: RunningSidecar) -> tuple[int, int]:
    """(connections made, connections lost) by the sidecar's link so far, from its log."""
    log = sidecar.log()
    return log.count("connected to the broker at "), log.count("lost the broker connection")


def sidecar_link_works(broker: RunningBroker, sidecar: RunningSidecar, application: Login) -> list[str]:
    """An HTTP device's telemetry reaches an application over the link, and an application's
    RPC reaches the device's long poll over it; what did not."""
    problems = []
    with Registry.open(broker.data_dir) as registry:
        http_device = device_login(broker, registry, TOKEN)
    token, device_id = http_device.username, http_device.device_id
    app = helper_connection(application)
    assert [c.value for c in app.subscribe(f"gatehouse/devices/{device_id}/telemetry", 1)] == [1]
    response = requests.post(f"{sidecar.url}/api/v1/{token}/telemetry", json={"probe": "after"}, timeout=10)
    if response.status_code != 200:
        problems.append(f"HTTP telemetry answered {response.status_code}")
    elif awaited(app, {f"gatehouse/devices/{device_id}/telemetry": "after"}):
        problems.append("an HTTP device's telemetry did not reach the application through the sidecar's link")
    assert app.publish(f"gatehouse/devices/{device_id}/rpc/call/77", '{"method": "probe", "params": {}}')
    poll = requests.get(f"{sidecar.url}/api/v1/{token}/rpc", params={"timeout": int(EXPECT * 1000)},
                        timeout=EXPECT + 10)
    if poll.status_code != 200 or poll.json().get("id") != 77:
        problems.append(f"an application's RPC did not reach the HTTP device's long poll: {poll.status_code} "
                        f"{poll.text[:200]}")
    return problems


def test_no_other_identity_replaces_or_disconnects_the_sidecar_link(gh, tmp_path):
    broker, sidecar = gh
    with Registry.open(broker.data_dir) as registry:
        application = application_login(broker, registry)
        intruders = {kind: intruder_login(broker, registry, kind, tmp_path) for kind in INTRUDERS}
        bait_device = device_login(broker, registry, TOKEN)  # an HTTP device: its RPCs go to the link
    bait = RpcBait(bait_device.device_id, application)
    # One victim, so one attempt after the other (each intruder identity may log in again:
    # its previous connection is closed by then).
    client_ids = sidecar_client_ids(sidecar)
    failures, attempts = [], 0
    for intruder_kind, login in intruders.items():
        for action in LIVE_ACTIONS:
            for client_id in client_ids:
                attempts += 1
                label = (f"[sidecar link victim (client id {client_id}) | {intruder_kind} intruder | {action} "
                         f"| MQTT {MQTT311}]")
                failures.extend(f"{label} {problem}" for problem in
                                attack_sidecar_link(sidecar, bait, login, intruder_kind, action, client_id))
    failures.extend(f"[sidecar link victim | after every attempt] {problem}"
                    for problem in sidecar_link_works(broker, sidecar, application))
    assert not failures, report(failures, attempts, "attacks on the sidecar's link")


class RpcBait(Probe):
    """What the sidecar's link receives: an application's RPC to an HTTP device (sent during
    each attempt, so that an intruder standing in for the link would get it)."""

    def __init__(self, device_id: str, application: Login):
        super().__init__(application)
        self.device_id = device_id
        self._rpc_ids = iter(range(1, 1000))

    def send(self) -> None:
        self.publish(f"gatehouse/devices/{self.device_id}/rpc/call/{next(self._rpc_ids)}",
                     {"method": "probe", "params": {}}, "an application's RPC to an HTTP device")


def attack_sidecar_link(sidecar: RunningSidecar, bait: RpcBait, login: Login, intruder_kind: str, action: str,
                        client_id: str) -> list[str]:
    """One login with the sidecar link's client id while the link is connected; what went wrong."""
    problems = []
    made, lost = link_events(sidecar)
    intruder = log_in(login, client_id, MQTT311, persistent=action == REPLACE)
    try:
        problems.extend(connack_problems(intruder_kind, intruder))
        bait.send()
        problems.extend(bait.problems)
        bait.problems.clear()
        time.sleep(QUIET)
        got = leaked(intruder)
        if got is not None:
            problems.append(f"intruder received the link's messages: {got}")
    finally:
        intruder.close()
    if link_events(sidecar)[1] > lost:
        problems.append("the sidecar's link was disconnected")
        # Let it reconnect, so that the next attempt meets a live link again.
        if not wait_until(lambda: link_events(sidecar)[0] > made, SIDECAR_RECONNECT):
            problems.append(f"the sidecar's link did not come back within {SIDECAR_RECONNECT:g} s")
    return problems
