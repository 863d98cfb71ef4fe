"""CoAP over DTLS 1.2 ("coaps", UDP 5684) for the bridge's aiocoap Context (SPEC §6, DTLS modes).

aiocoap 0.4.17 has no X.509 DTLS server (its tinydtls transport is PSK only), so this module
terminates DTLS itself with pyOpenSSL memory BIOs and hands each decrypted record to aiocoap as a
datagram. The listener joins the bridge's existing Context, so plain CoAP and coaps requests
reach the same Site. The one thing resources see of it: each coaps request's `request.remote`
has `client_certificate`, the peer's certificate as DER bytes, or None for one-way DTLS.

Client certificates are asked for but not required, and any certificate is accepted whoever
signed it, as ThingsBoard does: the device is whichever X.509 device's thumbprint the
certificate has, looked up by the application (SPEC §1.4), so self-signed device certificates
work. The handshake still proves the client holds the certificate's private key. Expired or
not-yet-valid certificates fail the handshake, as in ThingsBoard.

This relies on aiocoap internals (`Context._append_tokenmanaged_messagemanaged_transport`,
`GenericMessageInterface`), hence `aiocoap==0.4.17` in setup.cfg.

Why one module of about 500 lines: it is one transport, in the shape of aiocoap's own transport
modules (records, the OpenSSL context, sessions, the endpoint, in that order), and its parts are
each other's only users; every one of them depends on the same pinned aiocoap internals.
"""
from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from aiocoap import error, interfaces
from aiocoap.transports.generic_udp import GenericMessageInterface
from aiocoap.util import hostportjoin
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

__all__ = ["DtlsServer", "add_dtls_listener"]

log = logging.getLogger(__name__)

# Ciphertext datagrams are kept to 1200 bytes, which fits any IPv6 path (minimum MTU 1280)
# without IP fragmentation; OpenSSL fragments handshake messages to it.
DATAGRAM_MTU = 1200
DEFAULT_MAX_SESSIONS = 10_000
# ThingsBoard binds a DTLS session to its certificate for 24 h of inactivity
# (coap.dtls.x509.dtls_session_inactivity_timeout); the session cap bounds the memory.
DEFAULT_IDLE_TIMEOUT = 86_400.0
# A handshake abandoned half-way holds a session slot only this long.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0

_RECORD_HEADER = 13  # content type, version (2), epoch (2), sequence number (6), length (2)
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_COOKIE_BYTES = 16
_DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION, which pyOpenSSL does not export
# OpenSSL's verification errors that fail the handshake; every other one (unknown issuer,
# self-signed, ...) is accepted, the thumbprint lookup deciding instead.
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10
_REFUSED_VERIFY_ERRORS = frozenset({_X509_V_ERR_CERT_NOT_YET_VALID, _X509_V_ERR_CERT_HAS_EXPIRED})


# --- DTLS records ---------------------------------------------------------------------------------

def _records(data: bytes) -> Iterator[bytes]:
    """The DTLS records in `data`, which OpenSSL's memory BIO hands out concatenated."""
    offset = 0
    while offset + _RECORD_HEADER <= len(data):
        (length,) = struct.unpack_from("!H", data, offset + 11)
        end = offset + _RECORD_HEADER + length
        yield data[offset:end]
        offset = end


def _datagrams(data: bytes, mtu: int = DATAGRAM_MTU) -> Iterator[bytes]:
    """Records packed into datagrams of at most `mtu` bytes (a record is never split: DTLS
    records must each arrive whole in one datagram)."""
    datagram = b""
    for record in _records(data):
        if datagram and len(datagram) + len(record) > mtu:
            yield datagram
            datagram = b""
        datagram += record
    if datagram:
        yield datagram


def is_initial_client_hello(datagram: bytes) -> bool:
    """A ClientHello in epoch 0: the start (or restart) of a handshake, the only thing an
    address without a session may send."""
    return (len(datagram) > _RECORD_HEADER and datagram[0] == _HANDSHAKE
            and datagram[3:5] == b"\x00\x00" and datagram[_RECORD_HEADER] == _CLIENT_HELLO)


def _drain(connection: SSL.Connection) -> bytes:
    """Everything OpenSSL has written for the peer so far."""
    chunks = []
    while True:
        try:
            chunks.append(connection.bio_read(65_536))
        except SSL.WantReadError:
            return b"".join(chunks)


# --- OpenSSL context ------------------------------------------------------------------------------

class _AddressCookies:
    """Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): an HMAC of the peer's address
    under a secret of this process, so the server keeps nothing for a ClientHello until the
    peer shows, by echoing the cookie, that it receives at the address it claims."""

    def __init__(self) -> None:
        self._secret = os.urandom(32)

    def cookie(self, sockaddr: tuple) -> bytes:
        host, port = sockaddr[:2]
        return hmac.new(self._secret, f"{host}|{port}".encode(), hashlib.sha256).digest()[:_COOKIE_BYTES]

    def generate(self, connection: SSL.Connection) -> bytes:
        return self.cookie(connection.get_app_data())

    def verify(self, connection: SSL.Connection, cookie: bytes) -> bool:
        return hmac.compare_digest(cookie, self.cookie(connection.get_app_data()))


def _accept_any_issuer(connection, certificate, errno: int, depth: int, ok: int) -> bool:
    return errno not in _REFUSED_VERIFY_ERRORS


def server_ssl_context(cert_file: Path | str, key_file: Path | str, cookies: _AddressCookies) -> SSL.Context:
    """DTLS 1.2 server context: the server's certificate chain, client certificates requested
    but optional and accepted from any issuer."""
    context = SSL.Context(SSL.DTLS_SERVER_METHOD)
    context.set_min_proto_version(_DTLS1_2_VERSION)  # no DTLS 1.0
    # NO_QUERY_MTU: a memory BIO has no path MTU to ask; the MTU is set per connection instead.
    context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    # No resumption: every session's client certificate comes from a full handshake on it.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.use_certificate_chain_file(str(cert_file))
    context.use_privatekey_file(str(key_file))
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_PEER, _accept_any_issuer)
    context.set_cookie_generate_callback(cookies.generate)
    context.set_cookie_verify_callback(cookies.verify)
    return context


# --- sessions -------------------------------------------------------------------------------------

class SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class DtlsSession(interfaces.EndpointAddress):
    """One DTLS association with one peer address: the `remote` of the CoAP messages on it.

    Equality is identity, so a new session from the same address is a different remote
    (aiocoap's exchanges and block-wise state then do not carry over into it)."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, endpoint: _DtlsEndpoint, sockaddr: tuple, connection: SSL.Connection):
        self._endpoint = endpoint
        self.sockaddr = sockaddr
        self._connection = connection
        self.state = SessionState.HANDSHAKE
        self.client_certificate: bytes | None = None  # DER, once the handshake is done
        self.last_seen = time.monotonic()
        self._retransmission: asyncio.TimerHandle | None = None

    # aiocoap's EndpointAddress
    @property
    def hostinfo(self) -> str:
        return hostportjoin(self.sockaddr[0], self.sockaddr[1])

    @property
    def hostinfo_local(self) -> str:
        return self._endpoint.hostinfo_local

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def blockwise_key(self):
        return self

    def __repr__(self) -> str:
        return f"<DtlsSession {self.hostinfo} {self.state.value} certificate={self.client_certificate is not None}>"

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.OPEN

    # plaintext from aiocoap
    def send(self, plaintext: bytes) -> None:
        if self.state is not SessionState.OPEN:
            log.debug("not sending on %r", self)
            return
        try:
            self._connection.send(plaintext)
        except SSL.Error as e:
            log.info("DTLS send to %s failed: %s", self.hostinfo, e)
            self.close()
            return
        self._flush()

    # ciphertext from the peer
    def receive(self, datagram: bytes) -> None:
        self.last_seen = time.monotonic()
        try:
            self._connection.bio_write(datagram)
            if self.state is SessionState.HANDSHAKE and not self._advance_handshake():
                return
            while self.state is SessionState.OPEN:
                try:
                    # One SSL_read returns one record, and a record holds one CoAP message.
                    plaintext = self._connection.recv(65_536)
                except SSL.WantReadError:
                    break
                self._endpoint.deliver(self, plaintext)
        except SSL.ZeroReturnError:  # the peer's close_notify
            self.close(notify_peer=True)
            return
        except SSL.Error as e:
            log.info("DTLS session with %s failed: %s", self.hostinfo, e)
            self._flush()  # the alert OpenSSL wrote, if any
            self.close()
            return
        self._flush()

    def start_handshake(self) -> None:
        """Continue past a ClientHello whose cookie checked out (DTLSv1_listen succeeded)."""
        try:
            self._advance_handshake()
        except SSL.Error as e:
            log.info("DTLS handshake with %s failed: %s", self.hostinfo, e)
            self._flush()
            self.close()

    def _advance_handshake(self) -> bool:
        """True once the handshake is complete; sends what it produced either way."""
        try:
            self._connection.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return False
        self.state = SessionState.OPEN
        certificate = self._connection.get_peer_certificate(as_cryptography=True)
        self.client_certificate = None if certificate is None else certificate.public_bytes(Encoding.DER)
        return True

    def _flush(self) -> None:
        self._endpoint.send_datagrams(_drain(self._connection), self.sockaddr)
        self._arm_retransmission()

    def _arm_retransmission(self) -> None:
        """Handshake flights are retransmitted on OpenSSL's own timer (RFC 6347 §4.2.4); with a
        memory BIO nothing runs it unless asked to."""
        if self._retransmission is not None:
            self._retransmission.cancel()
            self._retransmission = None
        if self.state is SessionState.HANDSHAKE:
            delay = self._connection.DTLSv1_get_timeout()
            if delay is not None:
                self._retransmission = self._endpoint.loop.call_later(delay, self._retransmit)

    def _retransmit(self) -> None:
        self._retransmission = None
        if self.state is not SessionState.HANDSHAKE:
            return
        try:
            self._connection.DTLSv1_handle_timeout()
        except SSL.Error as e:  # too many retransmissions: the peer is gone
            log.info("DTLS handshake with %s abandoned: %s", self.hostinfo, e)
            self.close()
            return
        self._flush()

    def close(self, *, notify_peer: bool = False) -> None:
        """End the session: with our close_notify when asked (answering the peer's, or on
        shutdown), and tell aiocoap that exchanges on this remote are over."""
        if self.state is SessionState.CLOSED:
            return
        if notify_peer and self.state is SessionState.OPEN:
            try:
                self._connection.shutdown()
            except SSL.Error:
                pass
            self._endpoint.send_datagrams(_drain(self._connection), self.sockaddr)
        self.state = SessionState.CLOSED
        if self._retransmission is not None:
            self._retransmission.cancel()
            self._retransmission = None
        self._endpoint.forget(self)


class SessionTable:
    """The open and handshaking sessions by peer address, least recently used first; adding
    one past the cap closes the least recently used."""

    def __init__(self, max_sessions: int):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._by_address: OrderedDict[tuple, DtlsSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_address)

    def __iter__(self) -> Iterator[DtlsSession]:
        return iter(list(self._by_address.values()))

    def get(self, sockaddr: tuple) -> DtlsSession | None:
        return self._by_address.get(sockaddr)

    def touch(self, session: DtlsSession) -> None:
        self._by_address.move_to_end(session.sockaddr)

    def add(self, session: DtlsSession) -> None:
        replaced = self._by_address.get(session.sockaddr)
        if replaced is not None:
            replaced.close()
        while len(self._by_address) >= self.max_sessions:
            next(iter(self._by_address.values())).close()
        self._by_address[session.sockaddr] = session

    def remove(self, session: DtlsSession) -> None:
        if self._by_address.get(session.sockaddr) is session:
            del self._by_address[session.sockaddr]

    def reap(self, now: float, *, idle_timeout: float, handshake_timeout: float) -> int:
        """Close sessions silent for longer than their limit; how many were closed."""
        expired = [s for s in self._by_address.values()
                   if now - s.last_seen > (idle_timeout if s.is_open else handshake_timeout)]
        for session in expired:
            session.close()
        return len(expired)


# --- the UDP endpoint and aiocoap's message interface -----------------------------------------------

class _DtlsEndpoint(asyncio.DatagramProtocol):
    """The UDP socket: datagrams from known addresses go to their session; anything else must
    be a ClientHello with a valid cookie before a session is created for it."""

    def __init__(self, interface: _DtlsMessageInterface, ssl_context: SSL.Context, loop,
                 *, max_sessions: int, idle_timeout: float, handshake_timeout: float):
        self.interface = interface
        self.ssl_context = ssl_context
        self.loop = loop
        self.sessions = SessionTable(max_sessions)
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.hostinfo_local = ""
        self.transport: asyncio.DatagramTransport | None = None
        self._reaper: asyncio.Task | None = None
        self._closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.hostinfo_local = hostportjoin(host, port)

    def start_reaper(self) -> None:
        self._reaper = self.loop.create_task(self._reap_periodically(), name="DTLS session reaper")

    async def _reap_periodically(self) -> None:
        interval = min(self.idle_timeout, self.handshake_timeout) / 4
        while True:
            await asyncio.sleep(interval)
            self.sessions.reap(time.monotonic(), idle_timeout=self.idle_timeout,
                               handshake_timeout=self.handshake_timeout)

    def datagram_received(self, data: bytes, sockaddr: tuple) -> None:
        if self._closed:
            return
        session = self.sessions.get(sockaddr)
        if session is not None and not (session.is_open and is_initial_client_hello(data)):
            self.sessions.touch(session)
            session.receive(data)
            return
        # A new peer, or a client that restarted on an open session's address (RFC 6347
        # §4.2.8): the old session ends only once the new ClientHello's cookie checks out, so a
        # forged ClientHello cannot end anyone's session.
        connection = self._verified_client_hello(data, sockaddr)
        if connection is None:
            return
        session = DtlsSession(self, sockaddr, connection)
        self.sessions.add(session)
        session.start_handshake()

    def _verified_client_hello(self, datagram: bytes, sockaddr: tuple) -> SSL.Connection | None:
        """A connection past DTLSv1_listen when `datagram` is a ClientHello carrying this
        address's cookie; otherwise None, after answering a cookie-less ClientHello with a
        HelloVerifyRequest. Nothing about the peer is kept either way."""
        if not is_initial_client_hello(datagram):
            return None  # records of a session we do not have (reaped, or from before a restart)
        connection = SSL.Connection(self.ssl_context, None)  # None: memory BIOs
        connection.set_app_data(sockaddr)  # what the cookie callbacks read
        connection.set_accept_state()
        connection.set_ciphertext_mtu(DATAGRAM_MTU)
        try:
            connection.bio_write(datagram)
            connection.DTLSv1_listen()
        except SSL.WantReadError:  # no cookie, or a wrong one: HelloVerifyRequest (if any) goes out
            self.send_datagrams(_drain(connection), sockaddr)
            return None
        except SSL.Error as e:
            log.debug("unusable ClientHello from %s: %s", sockaddr, e)
            return None
        return connection

    def send_datagrams(self, data: bytes, sockaddr: tuple) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for datagram in _datagrams(data):
            self.transport.sendto(datagram, sockaddr)

    def deliver(self, session: DtlsSession, plaintext: bytes) -> None:
        self.interface._received_datagram(session, plaintext)

    def forget(self, session: DtlsSession) -> None:
        self.sessions.remove(session)
        self.interface._received_exception(session, error.NetworkError("DTLS session closed"))

    def error_received(self, exc: Exception) -> None:
        log.info("DTLS socket error: %s", exc)

    async def connect(self, sockaddr):
        raise error.LibraryShutdown("the DTLS listener only accepts sessions")

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for session in self.sessions:
            session.close(notify_peer=True)
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass
        if self.transport is not None:
            self.transport.close()


class _DtlsMessageInterface(GenericMessageInterface):
    """aiocoap's message layer over the DTLS sessions: server side only."""

    _pool: _DtlsEndpoint

    def _received_exception(self, address, exception) -> None:
        if self._mman is not None:  # None once aiocoap is shutting the interface down
            super()._received_exception(address, exception)

    def _received_datagram(self, address, datagram) -> None:
        if self._mman is not None:
            super()._received_datagram(address, datagram)

    async def determine_remote(self, request):
        return None  # never the transport for outgoing requests

    async def recognize_remote(self, remote) -> bool:
        return isinstance(remote, DtlsSession) and remote._endpoint is self._pool


# --- the one entry point ----------------------------------------------------------------------------

class DtlsServer:
    """A coaps listener added to an aiocoap Context; `close()` removes it again (the Context's
    own shutdown closes it too)."""

    def __init__(self, context, token_manager, endpoint: _DtlsEndpoint):
        self._context = context
        self._token_manager = token_manager
        self._endpoint = endpoint

    @property
    def port(self) -> int:
        return self._endpoint.transport.get_extra_info("sockname")[1]

    @property
    def sessions(self) -> SessionTable:
        return self._endpoint.sessions

    async def close(self) -> None:
        if self._token_manager in self._context.request_interfaces:
            self._context.request_interfaces.remove(self._token_manager)
            await self._token_manager.shutdown()
        await self._endpoint.shutdown()


async def add_dtls_listener(context, bind: tuple[str, int], *, cert_file: Path | str, key_file: Path | str,
                            max_sessions: int = DEFAULT_MAX_SESSIONS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                            handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT) -> DtlsServer:
    """Listen for coaps on `bind` (host, port; port 0: any) and serve its requests from the
    aiocoap server `context`'s Site. `cert_file` is the server certificate chain (PEM, leaf
    first), `key_file` its private key."""
    loop = asyncio.get_running_loop()
    ssl_context = server_ssl_context(cert_file, key_file, _AddressCookies())
    created: list[_DtlsEndpoint] = []

    async def create_interface(message_manager) -> _DtlsMessageInterface:
        interface = _DtlsMessageInterface(message_manager, context.log, loop)
        endpoint = _DtlsEndpoint(interface, ssl_context, loop, max_sessions=max_sessions,
                                 idle_timeout=idle_timeout, handshake_timeout=handshake_timeout)
        await loop.create_datagram_endpoint(lambda: endpoint, local_addr=bind)
        interface._pool = endpoint
        endpoint.start_reaper()
        created.append(endpoint)
        return interface

    await context._append_tokenmanaged_messagemanaged_transport(create_interface)
    token_manager = context.request_interfaces[-1]  # the one just appended for this interface
    return DtlsServer(context, token_manager, created[0])
