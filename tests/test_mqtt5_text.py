"""broker_plugin.mqtt5_text: every UTF-8 string field a client can send in MQTT 5 is checked
before the `mqtt5` codec sees it, because the codec panics on one that is not UTF-8 and the
panic writes to the process's stderr, past logging (tests/test_logs.py has the broker's side)."""
from __future__ import annotations

import random

import mqtt5
import pytest

from broker_plugin.interfaces import DisconnectReason
from broker_plugin.mqtt5_handler import decode
from broker_plugin.mqtt5_text import has_invalid_text
from broker_plugin.mqtt311_codec import MalformedPacket

# Client packets with every kind of text field, each a marker that occurs once.
PACKETS = {
    "connect": mqtt5.ConnectPacket(
        client_id="cid-text", username="user-text", password=b"\xff binary is fine",
        will=mqtt5.Will("will-topic", payload=b"\xff", content_type="will-ctype", response_topic="will-resp",
                        user_properties=[("will-key", "will-value")]),
        authentication_method="auth-method", user_properties=[("conn-key", "conn-value")]),
    "publish": mqtt5.PublishPacket(
        "topic-text", b"\xff\xfe binary payload", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=3,
        content_type="pub-ctype", response_topic="pub-resp", correlation_data=b"\xff",
        user_properties=[("pub-key", "pub-value")]),
    "subscribe": mqtt5.SubscribePacket(7, [mqtt5.TopicFilter("filter-one"), mqtt5.TopicFilter("filter-two")],
                                       user_properties=[("sub-key", "sub-value")]),
    "unsubscribe": mqtt5.UnsubscribePacket(8, ["unsub-one", "unsub-two"], user_properties=[("uns-key", "uns-v")]),
    "puback": mqtt5.PubAckPacket(5, reason_code=mqtt5.PubAckReasonCode.SUCCESS,
                                 user_properties=[("ack-key", "ack-value")]),
    "disconnect": mqtt5.DisconnectPacket(server_reference="server-ref", user_properties=[("dis-key", "dis-v")]),
}
TEXT_FIELDS = [(kind, marker) for kind, marker in [
    ("connect", m) for m in ("MQTT", "cid-text", "user-text", "will-topic", "will-ctype", "will-resp", "will-key",
                             "will-value", "auth-method", "conn-key", "conn-value")] + [
    ("publish", m) for m in ("topic-text", "pub-ctype", "pub-resp", "pub-key", "pub-value")] + [
    ("subscribe", m) for m in ("filter-one", "filter-two", "sub-key", "sub-value")] + [
    ("unsubscribe", m) for m in ("unsub-one", "unsub-two", "uns-key", "uns-v")] + [
    ("puback", m) for m in ("ack-key", "ack-value")] + [
    ("disconnect", m) for m in ("server-ref", "dis-key", "dis-v")]]


def corrupted(kind: str, marker: str) -> bytes:
    frame = PACKETS[kind].write()
    at = frame.index(marker.encode())
    return frame[:at + 1] + b"\xff" + frame[at + 2:]


@pytest.mark.parametrize("kind", PACKETS)
def test_valid_packets_pass_untouched_binary_fields_included(kind):
    frame = PACKETS[kind].write()
    assert not has_invalid_text(frame)
    assert type(decode(frame)) is type(PACKETS[kind])


@pytest.mark.parametrize(("kind", "marker"), TEXT_FIELDS)
def test_each_text_field_that_is_not_utf8_makes_the_packet_malformed_before_the_codec_runs(kind, marker, capfd):
    frame = corrupted(kind, marker)
    assert has_invalid_text(frame)
    with pytest.raises(MalformedPacket) as refused:
        decode(frame)
    assert refused.value.reason is DisconnectReason.MALFORMED_PACKET
    assert capfd.readouterr().err == ""


def test_server_packets_from_a_client_are_a_protocol_error_undecoded():
    for packet in (mqtt5.ConnAckPacket(), mqtt5.SubAckPacket(1, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE]),
                   mqtt5.PingRespPacket()):
        with pytest.raises(MalformedPacket) as refused:
            decode(packet.write())
        assert refused.value.reason is DisconnectReason.PROTOCOL_ERROR


def test_no_mutation_of_a_client_packet_makes_the_codec_write_to_stderr(capfd):
    """Random bytes changed in valid packets, lengths and property ids included: whatever the
    codec makes of them, it never panics (its panics are the only writes to stderr)."""
    rnd = random.Random(1)
    frames = [packet.write() for packet in PACKETS.values()]
    outcomes = {"decoded": 0, "malformed": 0}
    for _ in range(20_000):
        frame = bytearray(rnd.choice(frames))
        for _ in range(rnd.randint(1, 3)):
            frame[rnd.randrange(2, len(frame))] = rnd.choice((0xFF, 0xC3, 0x80, 0xED, rnd.randrange(256)))
        try:
            decode(bytes(frame))
            outcomes["decoded"] += 1
        except MalformedPacket:
            outcomes["malformed"] += 1
    assert capfd.readouterr().err == ""
    assert outcomes["decoded"] and outcomes["malformed"]  # both ways were taken
