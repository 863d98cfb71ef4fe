"""A raw MQTT fuzz run against a real `gatehouse broker`: packets made by real encoders (amqtt's
packet classes, the broker's own `encode_publish`) and then mutated — bit flips, truncation,
oversize remaining lengths, bad UTF-8, wrong flags — sent before and after CONNECT, plus random
byte streams, a CONNECT flood and slow-loris partial frames.

Throughout and afterwards a well-behaved paho device connects, publishes QoS 1 telemetry that is
stored, and receives a shared-attribute update from an application; a fuzz run or a CONNECT flood
is not over until the device has gone through such a round begun after the run began. Every
answer the broker sends a fuzz connection must be a well-formed sequence of server packets; the
broker must log no error and store no new device or credential.

The fuzz connections come from 127.0.0.2 so that the broker's failed-login blocking, which they
trigger, does not hit the well-behaved clients on 127.0.0.1. The run is seeded: a failure prints
`GATEHOUSE_FUZZ_SEED=N`, which replays it; GATEHOUSE_FUZZ_SCALE makes the run longer.
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.pingreq import PingReqPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.mqtt.unsubscribe import UnsubscribePacket
from amqtt.session import OutgoingApplicationMessage

from broker_plugin.mqtt311_codec import encode_publish, remaining_length
from gatehouse.registry import Registry

from .conftest import start_broker
from .devices import token_device, unique
from .fuzz_budget import budget
from .fuzz_inputs import row_counts
from .mqtt_client import TestClient as MqttClient
from .mqtt_client import connect, connect_packet, next_on

FUZZ_ADDRESS = "127.0.0.2"
CONCURRENCY = 40
FLOOD_SIZE = 300  # connections opened at once
ANSWER_WAIT = 0.3  # how long a fuzz connection listens for an answer before it hangs up
HANG_GUARD = 60  # seconds for the well-behaved device to be served during a run: only a hang trips it
SEED = int(os.environ.get("GATEHOUSE_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
REPLAY = f"replay with GATEHOUSE_FUZZ_SEED={SEED}"
# Control packet types a server may send (MQTT 3.1.1 §2.2.1; DISCONNECT and AUTH in MQTT 5).
SERVER_PACKET_TYPES = {2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15}
DEVICE_TOPICS = ("v1/devices/me/telemetry", "v1/devices/me/attributes", "v1/devices/me/attributes/request/1",
                 "v1/devices/me/rpc/request/1", "v1/devices/me/rpc/response/1", "v1/devices/me/claim",
                 "/provision/request", "gatehouse/devices/x/attributes/shared", "#", "$SYS/x", "a/+/b")
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80", b"\xe2\x82")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-mqtt")
    running = start_broker(root / "data", root / "broker.log", "--connect-timeout", "2")
    yield running
    running.stop()


# --- packets: encoded for real, then mutated ----------------------------------------------------


def valid_packets(rng: random.Random, token: str) -> list[bytes]:
    topic = rng.choice(DEVICE_TOPICS)
    payload = rng.choice([b'{"t":1}', b"{t:1}", b"[]", b"", orjson.dumps({"k" * rng.randint(1, 300): 1}),
                          bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))])
    packet_id = rng.randint(0, 0xFFFF)
    return [
        connect_packet(rng.choice(["", "fuzz", "provision", token]), rng.choice([None, token, "provision", "x"]),
                       rng.choice([None, "pw"]), keepalive=rng.choice([0, 1, 60, 0xFFFF]),
                       clean_session=rng.random() < 0.8, protocol_level=rng.choice([3, 4, 4, 4, 5])),
        encode_publish(OutgoingApplicationMessage(packet_id, topic, rng.choice([0, 1, 1, 2]), payload,
                                                  rng.random() < 0.1)),
        SubscribePacket.build([(topic, rng.randint(0, 2))], packet_id).to_bytes(),
        UnsubscribePacket.build([topic], packet_id).to_bytes(),
        PubackPacket.build(packet_id).to_bytes(),
        PubrecPacket.build(packet_id).to_bytes(),
        PubrelPacket.build(packet_id).to_bytes(),
        PubcompPacket.build(packet_id).to_bytes(),
        PingReqPacket().to_bytes(),
        DisconnectPacket().to_bytes(),
    ]


def header_length(packet: bytes) -> int:
    """Bytes of the fixed header: the type byte and the remaining length."""
    end = 1
    while end < len(packet) and packet[end] & 0x80:
        end += 1
    return end + 1


def _flip_bits(rng, packet):
    data = bytearray(packet)
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _truncate(rng, packet):
    return packet[:rng.randrange(len(packet))] if packet else packet


def _oversize_length(rng, packet):
    length = rng.choice([b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff\x01", b"\x80\x80\x80\x80\x80",
                         remaining_length(rng.choice([70_000, 268_435_455, len(packet) + 1000]))])
    return packet[:1] + length + packet[header_length(packet):]


def _wrong_length(rng, packet):
    body = packet[header_length(packet):]
    return packet[:1] + remaining_length(max(0, len(body) + rng.choice([-3, -1, 1, 5]))) + body


def _wrong_flags(rng, packet):
    return bytes((packet[0] & 0xF0 | rng.randrange(16),)) + packet[1:]


def _wrong_type(rng, packet):
    return bytes((rng.randrange(16) << 4 | packet[0] & 0x0F,)) + packet[1:]


def _bad_utf8(rng, packet):
    """Bad bytes spliced into the packet's first string (a topic, or CONNECT's protocol name), its
    length field adjusted so the packet is otherwise well-formed."""
    start = header_length(packet)
    if packet[0] >> 4 in (8, 10):  # SUBSCRIBE, UNSUBSCRIBE: the packet id comes first
        start += 2
    if len(packet) < start + 2:
        return packet
    size = int.from_bytes(packet[start:start + 2], "big")
    text = bytearray(packet[start + 2:start + 2 + size])
    at = rng.randint(0, len(text))
    text[at:at] = rng.choice(BAD_UTF8)
    body = packet[header_length(packet):start] + len(text).to_bytes(2, "big") + bytes(text) + packet[
        start + 2 + size:]
    return packet[:1] + remaining_length(len(body)) + body


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    _flip_bits, _truncate, _oversize_length, _wrong_length, _wrong_flags, _wrong_type, _bad_utf8]


def fuzz_case(rng: random.Random, token: str) -> list[bytes]:
    """The writes of one fuzz connection."""
    kind = rng.random()
    if kind < 0.1:
        return [bytes(rng.randrange(256) for _ in range(rng.randint(1, 512)))]
    packets = valid_packets(rng, token)
    mutated = rng.choice(MUTATIONS)(rng, rng.choice(packets))
    if kind < 0.3:  # before any CONNECT
        return [mutated]
    # An MQTT 5 session gets the 3.1.1 encodings too: its own decoder then meets packets without
    # properties, which is bad input of another kind.
    login = connect_packet(unique("fuzz"), token, protocol_level=rng.choice([4, 4, 5]))
    tail = [rng.choice(packets[1:]) for _ in range(rng.randint(0, 2))]
    if kind < 0.5:  # the mutated packet split over two writes, then more
        cut = rng.randint(0, len(mutated))
        return [login, mutated[:cut], mutated[cut:], *tail]
    return [login, mutated, *tail]


def server_packets_problem(answer: bytes) -> str | None:
    """Why `answer` is not a sequence of whole server packets (a cut-off last one is fine: the
    client hung up), or None."""
    offset = 0
    while offset < len(answer):
        kind = answer[offset] >> 4
        if kind not in SERVER_PACKET_TYPES:
            return f"packet type {kind} at byte {offset}"
        size, multiplier, end = 0, 1, offset + 1
        while end < len(answer):
            size += (answer[end] & 0x7F) * multiplier
            multiplier *= 128
            end += 1
            if not answer[end - 1] & 0x80:
                break
        offset = end + size
    return None


# --- running the cases --------------------------------------------------------------------------


async def _run_case(port: int, writes: list[bytes], *, wait: float = ANSWER_WAIT, enough: int | None = None,
                    hold: asyncio.Event | None = None) -> bytes:
    """Send `writes` on a new connection; what the broker answered within `wait` seconds (or
    until `enough` bytes came). With `hold`, the connection is closed only once it is set."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FUZZ_ADDRESS, 0))
    except OSError:
        return b""  # the broker refused a connection of the flood: allowed, as long as it serves
    answer = bytearray()
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
        async with asyncio.timeout(wait):
            while (enough is None or len(answer) < enough) and (chunk := await reader.read(4096)):
                answer += chunk
    except (TimeoutError, ConnectionError):
        pass
    try:
        if hold is not None:
            await hold.wait()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return bytes(answer)


async def _run_cases(port: int, cases: list[list[bytes]], hold: asyncio.Event) -> list[bytes]:
    """The cases, CONCURRENCY at a time; the last CONCURRENCY of them stay open until `hold` is set."""
    slots = asyncio.Semaphore(CONCURRENCY)  # first come, first served: the last cases start last

    async def one(index, writes):
        async with slots:
            return await _run_case(port, writes, hold=hold if index >= len(cases) - CONCURRENCY else None)

    return await asyncio.gather(*(one(index, writes) for index, writes in enumerate(cases)))


async def _slow_loris(port: int, prefix: bytes, partial: bytes, keep_going_for: float) -> bool:
    """Send `prefix`, then dribble `partial` (never a whole packet) a byte every 0.2 s; True when
    the broker hung up within `keep_going_for` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FUZZ_ADDRESS, 0))
    deadline = time.monotonic() + keep_going_for
    try:
        writer.write(prefix)
        for byte in partial:
            if time.monotonic() > deadline:
                return False
            writer.write(bytes((byte,)))
            await writer.drain()
            try:
                async with asyncio.timeout(0.2):
                    while True:  # what the broker says (a CONNACK) until it says nothing for a while
                        if not await reader.read(4096):
                            return True
            except TimeoutError:
                pass
        return False
    except ConnectionError:
        return True
    finally:
        writer.close()


class WellBehavedDevice:
    """A paho device that, in a loop until stopped, connects, publishes numbered QoS 1 telemetry
    and receives a shared-attribute update an application sends it."""

    def __init__(self, broker, app: MqttClient):
        self.broker, self.app = broker, app
        self.device, self.token = token_device(broker, "well-behaved")
        self.acknowledged: list[int] = []
        self.failures: list[str] = []
        self.rounds = 0
        self.served: list[tuple[float, float]] = []  # (began, done), time.monotonic(), of each round without failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def round(self) -> None:
        began, failures = time.monotonic(), len(self.failures)
        client = connect(self.broker.mqtt_port, unique("well-behaved"), self.token)
        try:
            if client.return_code != 0:
                self.failures.append(f"CONNACK {client.return_code}")
                return
            if [getattr(code, "value", code) for code in client.subscribe("v1/devices/me/attributes")] != [1]:
                self.failures.append("subscription refused")
                return
            seq = self.rounds
            if client.publish("v1/devices/me/telemetry", orjson.dumps({"seq": seq})):
                self.acknowledged.append(seq)
            else:
                self.failures.append(f"telemetry {seq} not acknowledged")
            assert self.app.publish(f"gatehouse/devices/{self.device.id}/attributes/shared",
                                    orjson.dumps({"round": seq}))
            try:
                update = next_on(client, "v1/devices/me/attributes")
                if orjson.loads(update.payload) != {"round": seq}:
                    self.failures.append(f"wrong update {update.payload!r}")
            except AssertionError as e:
                self.failures.append(str(e))
        finally:
            client.close()
            self.rounds += 1
        if len(self.failures) == failures:
            self.served.append((began, time.monotonic()))

    def served_within(self, start: float, end: float) -> int:
        """Rounds without failure that began at or after `start` and were done by `end`."""
        return sum(start <= began and done <= end for began, done in list(self.served))

    async def served_since(self, start: float) -> None:
        """Returns once a round begun at or after `start` has gone through."""
        deadline = time.monotonic() + HANG_GUARD
        while not self.served_within(start, time.monotonic()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the well-behaved device was not served within {HANG_GUARD} s; "
                                     f"failures: {self.failures[:5]}; {REPLAY}")
            await asyncio.sleep(0.02)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as e:  # a failed connect, say: record it, the test fails on it
                self.failures.append(repr(e))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def stored_sequence_numbers(self) -> set[int]:
        with Registry.open(self.broker.data_dir) as registry:
            return {row["value"] for row in registry.store.telemetry_history(self.device.id, "seq")}


async def _serving_throughout(device: WellBehavedDevice, run: Callable[[asyncio.Event], Awaitable[list[bytes]]]
                              ) -> tuple[list[bytes], int]:
    """`run(hold)`'s answers, and how many of the device's rounds went through while it ran. The
    run's last connections stay open until `hold` is set, which happens once a round of the
    device begun after the run began has gone through: so a run is never over before the device
    was served in its midst, however fast the run (a CONNECT flood takes a fraction of a second)."""
    hold = asyncio.Event()
    began = time.monotonic()

    async def hold_until_served() -> None:
        await device.served_since(began)
        hold.set()

    answers, _ = await asyncio.gather(run(hold), hold_until_served())
    return answers, device.served_within(began, time.monotonic())


def _devices_and_credentials(broker) -> dict[str, int]:
    """What no fuzz connection may add (valid telemetry among the mutations is stored, rightly)."""
    with Registry.open(broker.data_dir) as registry:
        counts = row_counts(registry)
    return {table: counts[table] for table in ("device", "device_credentials")}


@pytest.fixture
def application(broker, clients):
    with Registry.open(broker.data_dir) as registry:
        username, password = registry.create_application(unique("app"))
    app = connect(broker.mqtt_port, unique("app"), username, password)
    clients.append(app)
    assert app.return_code == 0
    return app


# --- the tests ----------------------------------------------------------------------------------


def test_broker_survives_malformed_packets_and_keeps_serving_a_well_behaved_device(broker, application):
    _, fuzz_token = token_device(broker, "fuzzed")
    rng = random.Random(SEED)
    cases = [fuzz_case(rng, fuzz_token) for _ in range(budget(2000))]
    device = WellBehavedDevice(broker, application)
    before = _devices_and_credentials(broker)
    with device:
        answers, served_during = asyncio.run(_serving_throughout(
            device, lambda hold: _run_cases(broker.mqtt_port, cases, hold)))
    device.round()  # and once more, now that the run is over
    assert broker.process.poll() is None, f"the broker died; {REPLAY}\n{broker.log()[-5000:]}"
    assert not device.failures, f"{device.failures[:5]}; {REPLAY}"
    assert served_during >= 1, REPLAY
    assert set(device.acknowledged) <= device.stored_sequence_numbers(), REPLAY
    for writes, answer in zip(cases, answers):
        problem = server_packets_problem(answer)
        assert problem is None, f"{problem} in the answer {answer[:100]!r} to {writes!r}; {REPLAY}"
    assert _devices_and_credentials(broker) == before, REPLAY
    # An exception the broker did not expect is logged at ERROR (by the broker or by asyncio for a
    # task that died); the mqtt5 codec's own panic messages on stderr are not.
    errors = [line for line in broker.log().splitlines() if " ERROR " in line]
    assert not errors, f"{REPLAY}\n" + "\n".join(errors[:20])


def test_broker_serves_a_well_behaved_device_through_connect_floods(broker, application):
    """Waves of FLOOD_SIZE connections at once, each with a CONNECT a well-behaved client might
    send, a bad token, or a CONNECT mutated; every one is answered or closed, and the device is
    served. A larger budget means more waves, not larger ones: a wave is sized so that the
    device's login, queued behind it, is still answered within paho's wait on this machine."""
    _, token = token_device(broker, "flooded")
    rng = random.Random(SEED)
    # An unmutated CONNECT's answers: 0x03 too once the bad ones got 127.0.0.2 blocked.
    logins = [(token, {0x00, 0x03}), ("wrong-token", {0x05, 0x03}), (None, {0x02, 0x03})]
    device = WellBehavedDevice(broker, application)
    with device:
        for _ in range(budget(1)):
            flood = []
            for _ in range(FLOOD_SIZE):
                username, codes = rng.choice(logins)
                packet = connect_packet(unique("flood"), username)
                flood.append((rng.choice(MUTATIONS)(rng, packet), None) if rng.random() < 0.3 else (packet, codes))

            async def run_flood(hold, flood=flood):
                # A login must be answered however long the flood takes: 4 bytes of CONNACK.
                return await asyncio.gather(*(_run_case(broker.mqtt_port, [packet], wait=60 if codes else ANSWER_WAIT,
                                                        enough=4 if codes else None, hold=hold)
                                              for packet, codes in flood))

            answers, served_during = asyncio.run(_serving_throughout(device, run_flood))
            assert served_during >= 1, REPLAY
            for (packet, codes), answer in zip(flood, answers):
                assert server_packets_problem(answer) is None, f"{answer!r} to {packet!r}; {REPLAY}"
                if codes is not None:
                    assert answer[:3] == b"\x20\x02\x00" and answer[3] in codes, f"{answer!r} to {packet!r}; {REPLAY}"
    device.round()
    assert broker.process.poll() is None, REPLAY
    assert not device.failures, f"{device.failures[:5]}; {REPLAY}"
    assert set(device.acknowledged) <= device.stored_sequence_numbers()


def test_slow_loris_partial_frames_are_cut_off_while_a_well_behaved_device_is_served(broker, application):
    """Partial frames dribbled a byte at a time: a CONNECT never finished (the 2 s CONNECT
    deadline closes it) and a PUBLISH never finished after a CONNECT with a 1 s keep-alive
    (closed at 1.5 s). Both are cut off long before they are done, and the device is served."""
    _, token = token_device(broker, "loris")
    # Frames that announce 60,000 bytes and bring a few hundred: complete only in hours at this pace.
    login = connect_packet(unique("loris"), token)
    never_done_connect = login[:1] + remaining_length(60_000) + login[header_length(login):] + b"x" * 200
    never_done_publish = b"\x32" + remaining_length(60_000) + b"\x00\x17v1/devices/me/telemetry" + b"x" * 200

    async def lorises():
        return await asyncio.gather(
            *(_slow_loris(broker.mqtt_port, b"", never_done_connect, keep_going_for=15) for _ in range(10)),
            *(_slow_loris(broker.mqtt_port, connect_packet(unique("loris"), token, keepalive=1), never_done_publish,
                          keep_going_for=15) for _ in range(5)))

    with WellBehavedDevice(broker, application) as device:
        cut_off = asyncio.run(lorises())
    assert cut_off == [True] * 15, "a connection that never finished its packet was kept open"
    assert not device.failures, device.failures[:5]
    assert device.rounds >= 1
    assert set(device.acknowledged) <= device.stored_sequence_numbers()
