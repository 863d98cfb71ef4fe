"""Who is this MQTT client? ThingsBoard's order (SPEC §2.1): a provisioning session, then Gatehouse's
own accounts, then the client certificate, then access token / MQTT basic
(credentials.authenticate_basic)."""
from __future__ import annotations

import logging
from dataclasses import replace

from .. import certificates
from ..credentials import StoredCredentials, authenticate_basic, basic_lookup_ids
from ..errors import SERVER_UNAVAILABLE_ERRORS
from ..login import (
    APPLICATION_USERNAME_PREFIX,
    SERVICE_USERNAME_PREFIX,
    LoginOutcome,
    LoginResult,
    is_provision_login,
    refusal_for_unknown_credentials,
)
from ..provisioning import ProvisionStatus
from .accounts import Accounts
from .context import RegistryContext
from .device_lookup import DeviceLookup
from .devices import Devices
from .provisioning import Provisioning

log = logging.getLogger(__name__)


class MqttLogin:
    def __init__(self, context: RegistryContext, lookup: DeviceLookup, devices: Devices,
                 provisioning: Provisioning, accounts: Accounts):
        self._key = context.key
        self._lookup = lookup
        self._devices = devices
        self._provisioning = provisioning
        self._accounts = accounts

    def login(self, client_id: str | None, username: str | None = None, password: str | None = None,
              cert_der: bytes | None = None, *, provision: bool = True) -> LoginResult:
        """The outcome of an MQTT CONNECT. With a client certificate, username and password are
        ignored; an unknown certificate may provision its device (X.509 chain profiles), the
        only login that writes; with `provision=False` it is refused instead. Never raises: an
        internal error is SERVER_UNAVAILABLE."""
        client_id = client_id or ""
        try:
            if is_provision_login(client_id, username):
                return LoginResult(LoginOutcome.PROVISION_SESSION)
            if username and username.startswith(APPLICATION_USERNAME_PREFIX):
                return self._accounts.application_login(username, password)
            if username and username.startswith(SERVICE_USERNAME_PREFIX):
                return self._accounts.service_login(username, password)
            if cert_der is not None:
                return self._certificate_login(cert_der, provision)
            # Every id the lookup order may ask for, fetched at once: one round trip to the store.
            find = self._lookup.prefetched(basic_lookup_ids(client_id, username))
            found = authenticate_basic(client_id, username, password, find=find, matches=self._key.matches)
            if found is None:
                return LoginResult(refusal_for_unknown_credentials(client_id, username, password))
            return self._accepted(found)
        except SERVER_UNAVAILABLE_ERRORS as e:  # the database out of reach: one line, not a traceback a login
            log.warning("login lookup failed: %s", e)
            return LoginResult(LoginOutcome.SERVER_UNAVAILABLE)
        except Exception:
            log.exception("login lookup failed")
            return LoginResult(LoginOutcome.SERVER_UNAVAILABLE)

    def _certificate_login(self, cert_der: bytes, provision: bool) -> LoginResult:
        try:
            cert = certificates.parse_certificate(cert_der)
        except certificates.CertificateError:
            return LoginResult(LoginOutcome.NOT_AUTHORIZED)
        if not certificates.is_within_validity(cert):
            return LoginResult(LoginOutcome.NOT_AUTHORIZED)
        found = self._lookup.certificate(cert_der)
        provisioning = None
        if found is None and provision:
            attempt = self._provisioning.provision_by_certificate(cert_der)
            provisioning = attempt if attempt.strategy is not None else None  # else no chain profile: no attempt
            if attempt.status is ProvisionStatus.SUCCESS:
                # Provisioning may answer SUCCESS for a device that keeps non-X.509 credentials;
                # only a device now holding this very certificate may log in with it (SPEC §1.4.2).
                found = self._lookup.certificate(cert_der)
        if found is None:
            return LoginResult(LoginOutcome.NOT_AUTHORIZED, provisioning=provisioning)
        return replace(self._accepted(found), provisioning=provisioning)

    def _accepted(self, found: StoredCredentials) -> LoginResult:
        return LoginResult(LoginOutcome.ACCEPTED, self._devices.by_id(found.device_id),
                           credentials_version=found.version, credentials_type=found.credentials_type)
