"""amqtt's Broker with the session-handling bugs fixed and what a production broker needs added
(notes/amqtt.md, G1–G6, G9, G13):

- a fresh CONNECT is authenticated before any existing session is touched, so a refused client
  can neither take over a persistent session's certificate identity (G1) nor wipe another
  client's subscriptions (G2), and is never left registered (G3); an exception in a plugin is a
  refusal, not a dropped socket (G4);
- the auth plugin chooses the CONNACK code (G13), and MQTT 5 gets a clean refusal;
- keep-alive is enforced at 1.5 × the client's value (G5) and CONNECT must arrive in time (G6);
- every PUBLISH goes to the Gatehouse plugin, which decides about the PUBACK (G9);
- subscriptions are granted QoS 1 at most, as ThingsBoard does.

It overrides private amqtt methods, so amqtt is pinned to the release these were written
against; tests/test_hardened_broker.py keeps a regression test for each fix.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque

from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING
from amqtt.utils import gen_client_id

from .connect_gate import has_empty_client_id, read_connect
from .interfaces import CLIENT_ID_GENERATED, CONNACK_CODE, MAX_IN_FLIGHT, PublishProcessor, PublishVerdict

_PREAUTHENTICATED = "gatehouse.preauthenticated"
KEEPALIVE_FACTOR = 1.5


class _Answer:
    """The broker's answer to one PUBLISH, decided once it is processed."""

    __slots__ = ("packet_id", "verdict")

    def __init__(self, packet_id: int | None):
        self.packet_id = packet_id  # None: QoS 0, never acknowledged
        self.verdict: PublishVerdict | None = None


class GatehouseProtocolHandler(BrokerProtocolHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Publishes of one connection are processed concurrently (a device's in-flight window
        # is then worth something) but answered in arrival order, as MQTT requires for PUBACKs.
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._answers: deque[_Answer] = deque()
        self._flush_scheduled = False

    def handle_read_timeout(self) -> None:
        # Nothing from the client for 1.5 × its keep-alive: it is gone (MQTT 3.1.1 §3.1.2.10).
        self._keepalive_expiry = asyncio.ensure_future(self.handle_connection_closed())

    async def _handle_qos1_message_flow(self, app_message) -> None:
        if app_message.direction == INCOMING:
            # The broker sends the PUBACK once the message has been processed.
            await self.session.delivered_message_queue.put(app_message)
            return
        await super()._handle_qos1_message_flow(app_message)

    async def send_puback(self, packet_id: int) -> None:
        await self._send_packet(PubackPacket.build(packet_id))

    def expect_answer(self, message) -> _Answer:
        answer = _Answer(message.packet_id if message.qos == QOS_1 else None)
        self._answers.append(answer)
        return answer

    def give_answer(self, answer: _Answer, verdict: PublishVerdict) -> None:
        answer.verdict = verdict
        if not self._flush_scheduled:
            # Answers decided in the same loop iteration (one group commit) leave in one write.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_answers)

    def _flush_answers(self) -> None:
        self._flush_scheduled = False
        acks = bytearray()
        close = False
        while self._answers and self._answers[0].verdict is not None:
            answer = self._answers.popleft()
            self.in_flight.release()
            if answer.verdict is PublishVerdict.CLOSE:
                close = True
                break
            if answer.verdict is PublishVerdict.ACK and answer.packet_id is not None:
                acks += PubackPacket.build(answer.packet_id).to_bytes()
        if acks and self.writer is not None:
            with contextlib.suppress(ConnectionError):  # the client may be gone
                self.writer.write(bytes(acks))
        if close:
            # No answer after the one that closes; the message loop then sees the disconnect
            # and cleans the session up as usual.
            while self._answers:
                self._answers.popleft()
                self.in_flight.release()
            asyncio.ensure_future(self.handle_connection_closed())


class HardenedBroker(Broker):
    def __init__(self, config, *, connect_timeout: float = 10.0, **kwargs):
        super().__init__(config, **kwargs)
        self.connect_timeout = connect_timeout
        self.publish_processor: PublishProcessor | None = None
        self.ssl_contexts: dict[str, ssl.SSLContext] = {}  # by bind address, for live trust updates
        self._publish_tasks: set[asyncio.Task] = set()

    def _create_ssl_context(self, listener) -> ssl.SSLContext:
        context = Broker._create_ssl_context(listener)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # A registered device certificate is a trust anchor by itself, CA-signed or not.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.ssl_contexts[listener["bind"]] = context
        return context

    def listening_port(self, listener_name: str) -> int:
        """The port a listener got (configured as port 0 in tests)."""
        return self._servers[listener_name].instance.sockets[0].getsockname()[1]

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        reader, connect_packet = await read_connect(reader, writer, self.connect_timeout)
        try:
            handler, incoming = await GatehouseProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            with contextlib.suppress(Exception):
                await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if has_empty_client_id(connect_packet):
            incoming.attributes[CLIENT_ID_GENERATED] = True

        try:
            accepted = await super()._authenticate(incoming, None)
        except Exception:
            self.logger.exception("auth plugin failed")
            accepted = False
        if not accepted:
            code = incoming.attributes.get(CONNACK_CODE, NOT_AUTHORIZED)
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, code).to_stream(writer)
                await writer.close()
            raise MQTTError(f"login refused with CONNACK {code}")

        session = incoming
        existing = self._sessions.get(incoming.client_id) if incoming.client_id else None
        if incoming.clean_session:
            if existing is not None:
                if existing[0].transitions.is_connected():
                    await existing[1].handle_connection_closed()  # amqtt would leave it running
                await self._delete_session(incoming.client_id)
            if not incoming.client_id:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
        elif existing is not None:
            # Resume the stored session with this connection's identity: nothing of the old
            # connection (its certificate above all) may carry over.
            session = existing[0]
            for attr in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password", "ssl_object", "remote_address", "remote_port"):
                setattr(session, attr, getattr(incoming, attr))
            session.attributes.clear()
            session.attributes.update(incoming.attributes)
            session.parent = 1
        else:
            incoming.parent = 0
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * KEEPALIVE_FACTOR)
        session.attributes[_PREAUTHENTICATED] = True
        return handler, session

    async def _authenticate(self, session, listener) -> bool:
        # Called again by _handle_client_session; the real check already ran above.
        return bool(session.attributes.pop(_PREAUTHENTICATED, False))

    async def add_subscription(self, subscription, session) -> int:
        topic_filter, qos = subscription
        # ThingsBoard supports QoS 0 and 1 only: granted QoS is min(requested, 1).
        return await super().add_subscription((topic_filter, min(qos, QOS_1)), session)

    async def _handle_message_delivery(self, client_session, handler, wait_deliver) -> bool:
        message = wait_deliver.result()
        if self.publish_processor is None:  # amqtt's routing; the deferred PUBACK is still ours
            keep = await super()._handle_message_delivery(client_session, handler, wait_deliver)
            if keep and message is not None and message.qos == QOS_1 and message.packet_id is not None:
                await handler.send_puback(message.packet_id)
            return keep
        if message is None:
            return True
        await handler.in_flight.acquire()  # backpressure: the loop reads no more until a slot frees
        answer = handler.expect_answer(message)
        task = asyncio.create_task(self._process_publish(client_session, handler, message, answer))
        self._publish_tasks.add(task)
        task.add_done_callback(self._publish_tasks.discard)
        return True

    async def _process_publish(self, session, handler, message, answer) -> None:
        verdict = PublishVerdict.CLOSE
        try:
            topic = message.topic
            if topic and "#" not in topic and "+" not in topic:  # else MQTT-4.7.3-1, MQTT-3.3.2-2
                verdict = await self.publish_processor.process_publish(session, topic, bytes(message.data or b""))
        except Exception:
            self.logger.exception("processing a PUBLISH from %s failed", session.client_id)
        finally:
            handler.give_answer(answer, verdict)

    async def shutdown(self) -> None:
        for task in list(self._publish_tasks):
            task.cancel()
        await asyncio.gather(*self._publish_tasks, return_exceptions=True)
        await super().shutdown()
