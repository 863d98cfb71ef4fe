"""MQTT logins: what a CONNECT proves (a device's access token, MQTT basic login or X.509
certificate, a provisioning login, an application or a service account), the role and the
session owner it gives, and refusals with their reason and the failed-login limit; then one
live session per device, and the devices and service accounts connected here. The decisions are
the domain's (Registry.mqtt_login); this module translates them for amqtt.

The TLS listeners trust every registered device certificate (TrustStore), so that a device with
a self-signed one gets as far as the login.
"""
from __future__ import annotations

import logging
import uuid

from amqtt.session import Session

from gatehouse import certificates
from gatehouse import metrics as m
from gatehouse.clock import now_ms
from gatehouse.device_activity import ActivityTracker
from gatehouse.errors import SERVER_UNAVAILABLE_ERRORS
from gatehouse.login import PROVISION_LOGIN, LoginOutcome, LoginResult
from gatehouse.login_limiter import LoginLimiter
from gatehouse.models import Device
from gatehouse.registry import Registry

from .connections import Connections
from .interfaces import CLIENT_ID_GENERATED, LOGIN_REFUSAL, SESSION_OWNER, DisconnectReason, LoginRefusal
from .registry_worker import RegistryWorker
from .session_state import (
    CLIENT_RPC_REPLIES,
    CREDENTIALS_VERSION,
    DEVICE,
    ROLE,
    ROLE_APPLICATION,
    ROLE_DEVICE,
    ROLE_PROVISION,
    ROLE_SERVICE,
    ProfileTransports,
)

log = logging.getLogger(__name__)

_REFUSALS = {
    LoginOutcome.BAD_USERNAME_OR_PASSWORD: LoginRefusal.BAD_USERNAME_OR_PASSWORD,
    LoginOutcome.CLIENT_ID_NOT_VALID: LoginRefusal.CLIENT_ID_NOT_VALID,
    LoginOutcome.NOT_AUTHORIZED: LoginRefusal.NOT_AUTHORIZED,
    LoginOutcome.SERVER_UNAVAILABLE: LoginRefusal.SERVER_UNAVAILABLE,
}

_logins = m.Children(m.LOGINS, m.MQTT)
_provisioning = m.Children(m.PROVISIONING, m.MQTT)


class Logins:
    def __init__(self, worker: RegistryWorker, limiter: LoginLimiter, transports: ProfileTransports,
                 connections: Connections, activity: ActivityTracker):
        self._worker = worker
        self._limiter = limiter
        self._transports = transports
        self._connections = connections
        self._activity = activity

    async def authenticate(self, session: Session) -> bool:
        for key in (ROLE, DEVICE, CREDENTIALS_VERSION, CLIENT_RPC_REPLIES, SESSION_OWNER):
            session.attributes.pop(key, None)
        # A will is a publish the broker would route as it is, past process_publish: a device
        # could speak for another one to applications. ThingsBoard ignores wills; so do we.
        session.will_flag, session.will_topic, session.will_message = False, None, None
        address = session.remote_address or ""
        if self._limiter.is_blocked(address):
            session.attributes[LOGIN_REFUSAL] = LoginRefusal.CONNECTION_RATE_EXCEEDED
            _logins(m.UNKNOWN, m.BLOCKED).inc()
            return False
        cert_der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
        client_id = "" if session.attributes.get(CLIENT_ID_GENERATED) else session.client_id
        # Logins only read (RegistryWorker.read); an unknown certificate may have to provision
        # its device (a write), and that goes to the database thread.
        result = await self._worker.read(Registry.mqtt_login, client_id, session.username, session.password, cert_der,
                                         provision=False)
        if cert_der is not None and result.outcome is LoginOutcome.NOT_AUTHORIZED:
            result = await self._worker.call(Registry.mqtt_login, client_id, session.username, session.password,
                                             cert_der)
        if result.outcome is LoginOutcome.ACCEPTED:
            try:
                await self._transports.know(result.device.profile_id)
            except SERVER_UNAVAILABLE_ERRORS as e:  # the database went away since the lookup
                log.warning("login from %s not completed: %s", address, e)
                result = LoginResult(LoginOutcome.SERVER_UNAVAILABLE)
        _logins(m.login_credentials_type(result, session.username, cert_der is not None), m.login_outcome(result)).inc()
        if result.provisioning is not None:
            _provisioning(m.provision_strategy(result.provisioning), result.provisioning.status.value).inc()
        if result.outcome is LoginOutcome.PROVISION_SESSION:
            # It proved nothing: it owns no session (the hardened broker gives it one nobody else
            # can reach) and it never clears its address's failed logins.
            session.attributes[ROLE] = ROLE_PROVISION
            if session.client_id == PROVISION_LOGIN:
                # Under a plain amqtt, where one client id is one session, the many devices that
                # provision with client id "provision" at once would evict each other.
                session.client_id = f"{PROVISION_LOGIN}/{uuid.uuid4()}"
            return True
        if result.outcome is LoginOutcome.APPLICATION:
            session.attributes.update({ROLE: ROLE_APPLICATION, SESSION_OWNER: f"application:{result.application}"})
        elif result.outcome is LoginOutcome.SERVICE:
            session.attributes.update({ROLE: ROLE_SERVICE, SESSION_OWNER: f"service:{result.application}"})
        elif result.outcome is LoginOutcome.ACCEPTED:
            session.attributes.update({ROLE: ROLE_DEVICE, DEVICE: result.device, SESSION_OWNER: f"device:{result.device.id}",
                                       CREDENTIALS_VERSION: result.credentials_version, CLIENT_RPC_REPLIES: {}})
        else:
            if result.outcome is not LoginOutcome.SERVER_UNAVAILABLE:
                self._limiter.failed(address)
            session.attributes[LOGIN_REFUSAL] = _REFUSALS[result.outcome]
            log.info("login refused (%s) from %s", result.outcome.value, address)
            return False
        self._limiter.succeeded(address)  # a secret (token, password, certificate) was proved
        return True

    async def client_connected(self, client_id: str, session: Session) -> None:
        connections = self._connections
        if session.attributes.get(ROLE) == ROLE_SERVICE:
            connections.services[client_id] = session
            return
        device: Device | None = session.attributes.get(DEVICE)
        if device is None:
            return
        # One live session per device (ThingsBoard's rule): a login with another client id
        # closes the older connection. Its end is told here, before the new start, because its
        # own disconnect handling finds itself replaced and says nothing.
        previous = connections.devices.get(device.id)
        connections.devices[device.id] = session
        self._activity.connected(device.id, now_ms())
        if previous is not None and previous is not session:
            log.info("device %s connected again; closing its older session", device.name)
            await connections.disconnect(previous, DisconnectReason.SESSION_TAKEN_OVER)
            await connections.publish_event(device.id, "disconnected")
        await connections.publish_event(device.id, "connected")

    async def client_disconnected(self, client_id: str, session: Session) -> None:
        connections = self._connections
        if connections.services.get(client_id) is session:
            del connections.services[client_id]
        device: Device | None = session.attributes.get(DEVICE)
        if device is not None and connections.devices.get(device.id) is session:
            del connections.devices[device.id]
            self._activity.disconnected(device.id, now_ms())
            await connections.publish_event(device.id, "disconnected")


class TrustStore:
    """The TLS listeners' trust anchors, kept up with the registered device certificates (the
    hardened broker's listeners; a plain amqtt has none to update)."""

    def __init__(self, broker, worker: RegistryWorker):
        self._broker = broker
        self._worker = worker
        self._trusted: set[str] = set()

    async def refresh(self) -> None:
        contexts = getattr(self._broker, "ssl_contexts", {})
        if not contexts:
            return
        for anchor_id, text in (await self._worker.call(Registry.new_trust_anchors, self._trusted)).items():
            self._trusted.add(anchor_id)
            try:
                der = certificates.der_bytes(certificates.parse_certificate(text))
            except certificates.CertificateError:
                continue  # provisioning stores what devices send (SPEC §3.4); it cannot log in anyway
            for context in contexts.values():
                context.load_verify_locations(cadata=der)
