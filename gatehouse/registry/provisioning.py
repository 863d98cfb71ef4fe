"""Provisioning requests run against the registry: what gatehouse.provisioning decides
(I/O-free) is loaded for and applied here, in one write transaction with its audit event."""
from __future__ import annotations

import json
from dataclasses import replace

from .. import certificates
from ..clock import now_ms
from ..credentials import AccessToken, X509Certificate, generate_secret
from ..errors import ValidationError
from ..models import AttributeScope, CredentialsType, DeviceProfile, java_trim
from ..payloads import KvEntry, ValueKind
from ..provisioning import (
    PROVISION_STATE_KEY,
    PROVISIONED,
    CreateDevice,
    ExistingDevice,
    Failure,
    MarkProvisioned,
    NotFound,
    ProvisionRequest,
    ProvisionResult,
    ProvisionStatus,
    UseExisting,
    decide_provision,
    decide_x509_chain,
)
from .context import RegistryContext
from .device_data import AttributesAndTelemetry, DeviceDataWrite
from .devices import Devices
from .profiles import Profiles


class Provisioning:
    def __init__(self, context: RegistryContext, profiles: Profiles, devices: Devices,
                 data: AttributesAndTelemetry):
        self._store = context.store
        self._profiles = profiles
        self._devices = devices
        self._data = data

    def provision(self, request: ProvisionRequest, *, transport: str | None = None,
                  remote_address: str | None = None) -> ProvisionResult:
        """Run a key/secret provisioning request (SPEC §3.4) in one write transaction: the
        decision and its effects commit together or not at all. Raises ProvisionRequestError
        for a key/secret request against an X.509-chain profile, as ThingsBoard does."""
        with self._store.transaction():
            profile = self._profiles.by_provision_key(request.provision_device_key)
            existing = self._existing_device(java_trim(request.device_name))
            decision = decide_provision(request, profile, existing)
            result = replace(self._apply(decision, profile), strategy=profile.provision_type if profile else None)
            self._record_event(result, profile, java_trim(request.device_name) or None, transport, remote_address)
        return result

    def provision_by_certificate(self, cert_der: bytes, *, transport: str | None = "MQTT",
                                 remote_address: str | None = None) -> ProvisionResult:
        """X.509 certificate-chain provisioning at a TLS login (SPEC §1.4.2). Only the leaf is
        available, so the chain profile is the one whose CA issued (and signed) the leaf."""
        try:
            leaf = certificates.parse_certificate(cert_der)
        except certificates.CertificateError:
            return ProvisionResult(ProvisionStatus.NOT_FOUND, reason="unparseable certificate")
        with self._store.transaction():
            profile = self._chain_profile_for(leaf)
            if profile is None:
                return ProvisionResult(ProvisionStatus.NOT_FOUND, reason="no chain profile trusts the issuer")
            decision = decide_x509_chain(profile, certificates.common_name(leaf),
                                         X509Certificate(certificates.base64_body(leaf)), self._existing_device)
            result = replace(self._apply(decision, profile), strategy=profile.provision_type)
            self._record_event(result, profile, certificates.common_name(leaf), transport, remote_address)
        return result

    def events(self, device: str | None = None) -> list[dict]:
        """The provisioning audit trail, of one device or of all."""
        device_id = self._devices.row(device)["id"] if device else None
        return self._store.provisioning_events(device_id=device_id)

    def _chain_profile_for(self, leaf) -> DeviceProfile | None:
        for profile in self._profiles.chain_profiles():
            # An X.509 chain profile's "secret" is its CA certificate chain (PEM).
            pem = certificates.split_pem_certificates(profile.provision_device_secret)[0]
            if certificates.is_issued_by(leaf, certificates.parse_certificate(pem)):
                return profile
        return None

    def _existing_device(self, name: str) -> ExistingDevice | None:
        row = self._store.device(name=name) if name else None
        if row is None:
            return None
        state = self._store.attributes(row["id"], AttributeScope.SERVER.value, [PROVISION_STATE_KEY])
        return ExistingDevice(id=row["id"], name=row["name"], profile_id=row["profile_id"],
                              credentials_type=CredentialsType(row["credentials_type"]),
                              provision_state=str(state[0]["value"]) if state else None)

    def _apply(self, decision, profile: DeviceProfile | None) -> ProvisionResult:
        if isinstance(decision, NotFound):
            return ProvisionResult(ProvisionStatus.NOT_FOUND, reason=decision.reason)
        if isinstance(decision, Failure):
            return ProvisionResult(ProvisionStatus.FAILURE, device_id=decision.device_id, reason=decision.reason)
        if isinstance(decision, CreateDevice):
            try:
                with self._store.transaction():  # a savepoint: a clash leaves no half-made device
                    device_id = self._devices.insert(
                        decision.name or generate_secret(), profile.id, None,
                        {"gateway": True} if decision.gateway else {},
                        decision.credentials or AccessToken(generate_secret()))
                    self._mark_provisioned(device_id)
            except ValidationError as e:
                return ProvisionResult(ProvisionStatus.FAILURE, reason=str(e))
        elif isinstance(decision, MarkProvisioned):
            device_id = decision.device_id
            self._mark_provisioned(device_id)
        else:
            assert isinstance(decision, UseExisting)
            device_id = decision.device_id
            if decision.rotate_to is not None:
                try:
                    with self._store.transaction():
                        self._devices.replace_credentials(self._store.credentials(device_id), decision.rotate_to)
                except ValidationError as e:
                    return ProvisionResult(ProvisionStatus.FAILURE, device_id=device_id, reason=str(e))
        return self._success(device_id)

    def _mark_provisioned(self, device_id: str) -> None:
        self._data.write([DeviceDataWrite(device_id, scope=AttributeScope.SERVER, attributes=(
            KvEntry(PROVISION_STATE_KEY, ValueKind.STRING, PROVISIONED),))])

    def _success(self, device_id: str) -> ProvisionResult:
        credentials = self._devices.revealed_credentials(device_id)
        value: str | dict | None = credentials.credentials_value
        if credentials.credentials_type is CredentialsType.ACCESS_TOKEN:
            value = credentials.credentials_id
        elif credentials.credentials_type is CredentialsType.MQTT_BASIC:
            value = json.loads(value)  # an object in provisioning responses (SPEC §3.3)
        return ProvisionResult(ProvisionStatus.SUCCESS, credentials.credentials_type, value, device_id,
                               self._store.device(id=device_id)["name"])

    def _record_event(self, result: ProvisionResult, profile: DeviceProfile | None, device_name: str | None,
                      transport: str | None, remote_address: str | None) -> None:
        self._store.add_provisioning_event({
            "ts": now_ms(), "profile_id": profile.id if profile else None, "device_id": result.device_id,
            "device_name": result.device_name or device_name,
            "strategy": profile.provision_type.value if profile else None, "outcome": result.status.value,
            "reason": result.reason, "transport": transport, "remote_address": remote_address,
        })
