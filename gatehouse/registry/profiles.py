"""Device profiles: their provisioning strategy and settings (key and sealed secret, or the
trusted CA of an X.509 chain), their MQTT topic settings, and the one default profile."""
from __future__ import annotations

import re

from .. import certificates
from ..clock import now_ms
from ..credentials import generate_secret, sha3_hash
from ..errors import NotFoundError, ValidationError
from ..ids import new_id
from ..models import DeviceProfile, ProvisionType
from ..mqtt_topic_settings import MqttTopicSettings
from ..storage import PROFILE_SORT_KEYS, IntegrityError
from .context import RegistryContext
from .rules import (
    DEFAULT_CN_REGEX,
    DEFAULT_PROFILE_NAME,
    KEY_SECRET_STRATEGIES,
    check_order,
    integrity_error,
    profile_name,
)


def _profile_clash(error: IntegrityError, strategy: ProvisionType) -> ValidationError:
    if strategy is ProvisionType.X509_CERTIFICATE_CHAIN and error.constraint == "device_profile.provision_device_key":
        return ValidationError("Device profile with such certificate already exists!", field="ca_certificate")
    return integrity_error(error)


def _secret_context(profile_id: str) -> str:
    return f"device_profile:{profile_id}"


class Profiles:
    def __init__(self, context: RegistryContext):
        self._store = context.store
        self._key = context.key
        if self._store.default_profile() is None:
            with self._store.transaction():
                if self._store.default_profile() is None:
                    self.insert(DEFAULT_PROFILE_NAME, ProvisionType.DISABLED, is_default=True)

    def create(
        self,
        name: str,
        strategy: ProvisionType = ProvisionType.DISABLED,
        *,
        key: str | None = None,
        secret: str | None = None,
        ca_certificate_pem: str | None = None,
        cn_regex: str = DEFAULT_CN_REGEX,
        allow_create: bool = True,
        description: str | None = None,
        default: bool = False,
        mqtt_topics: MqttTopicSettings | None = None,
    ) -> DeviceProfile:
        """Key and secret are generated when not given; an X.509 chain profile's key is the
        SHA3 hash of its CA certificate, as in ThingsBoard. `mqtt_topics` None is
        ThingsBoard's DEFAULT transport."""
        strategy = ProvisionType(strategy)
        with self._store.transaction():
            profile_id = self.insert(
                name, strategy, is_default=default, key=key, secret=secret, ca_certificate_pem=ca_certificate_pem,
                cn_regex=cn_regex, allow_create=allow_create, description=description, mqtt_topics=mqtt_topics)
            return self.from_row(self._store.profile(id=profile_id))

    def update(
        self,
        profile_id: str,
        name: str,
        strategy: ProvisionType = ProvisionType.DISABLED,
        *,
        key: str | None = None,
        secret: str | None = None,
        ca_certificate_pem: str | None = None,
        cn_regex: str = DEFAULT_CN_REGEX,
        allow_create: bool = True,
        description: str | None = None,
        mqtt_topics: MqttTopicSettings | None = None,
    ) -> DeviceProfile:
        """Replace a profile's name, description, provisioning and transport settings in place
        (ThingsBoard's save with an id); its id, devices and default flag stay. A key or secret
        not given keeps the current one while the strategy stays a key/secret one, else is
        generated. Connected MQTT devices follow a transport change within a second."""
        strategy = ProvisionType(strategy)
        with self._store.transaction():
            row = self.row(profile_id, by_id=True)
            if strategy in KEY_SECRET_STRATEGIES and row["provision_type"] in KEY_SECRET_STRATEGIES:
                key = key or row["provision_device_key"]
                secret = secret or self._key.open(row["sealed_provision_secret"], _secret_context(row["id"]))
            changes = {"name": profile_name(name), "description": description, "provision_type": strategy.value,
                       **self._provision_columns(row["id"], strategy, key, secret, ca_certificate_pem, cn_regex,
                                                 allow_create),
                       **_topic_columns(mqtt_topics)}
            try:
                self._store.update_profile(row["id"], changes)
            except IntegrityError as e:
                raise _profile_clash(e, strategy) from None
            return self.from_row(self._store.profile(id=row["id"]))

    def insert(self, name, strategy, *, is_default=False, key=None, secret=None, ca_certificate_pem=None,
               cn_regex=DEFAULT_CN_REGEX, allow_create=True, description=None, mqtt_topics=None) -> str:
        """A new profile row, inside the caller's transaction; returns its id."""
        profile_id = new_id()
        row = {"id": profile_id, "created_time": now_ms(), "name": profile_name(name), "description": description,
               "is_default": int(is_default), "provision_type": strategy.value,
               **self._provision_columns(profile_id, strategy, key, secret, ca_certificate_pem, cn_regex,
                                         allow_create),
               **_topic_columns(mqtt_topics)}
        try:
            if is_default:
                self._store.clear_default_profile()
            self._store.insert_profile(row)
        except IntegrityError as e:
            raise _profile_clash(e, strategy) from None
        return profile_id

    def _provision_columns(self, profile_id, strategy, key, secret, ca_certificate_pem, cn_regex,
                           allow_create) -> dict:
        """Every strategy-dependent column, the unused ones NULL (a strategy change clears them)."""
        columns = dict.fromkeys(("provision_device_key", "sealed_provision_secret", "ca_certificate_pem",
                                 "certificate_regex", "allow_create_by_x509"))
        if strategy in KEY_SECRET_STRATEGIES:
            key, secret = key or generate_secret(), secret or generate_secret()
            for label, value in (("key", key), ("secret", secret)):
                if value != value.strip() or re.search(r"[\x00-\x1f\x7f]", value):
                    raise ValidationError(f"Provision device {label} must not contain whitespace at its ends "
                                          "or control characters", field=f"provision_{label}")
            columns["provision_device_key"] = key
            columns["sealed_provision_secret"] = self._key.seal(secret, _secret_context(profile_id))
        elif strategy is ProvisionType.X509_CERTIFICATE_CHAIN:
            columns.update(_x509_chain_columns(ca_certificate_pem, cn_regex, allow_create))
        elif key or secret or ca_certificate_pem:
            raise ValidationError("A DISABLED profile takes no provision key, secret or certificate",
                                  field="provision_secret")
        return columns

    def from_row(self, row: dict) -> DeviceProfile:
        strategy = ProvisionType(row["provision_type"])
        secret = row["ca_certificate_pem"]
        if row["sealed_provision_secret"] is not None:
            secret = self._key.open(row["sealed_provision_secret"], _secret_context(row["id"]))
        allow = row["allow_create_by_x509"]
        return DeviceProfile(
            id=row["id"], created_time=row["created_time"], name=row["name"], description=row["description"],
            is_default=bool(row["is_default"]), provision_type=strategy,
            provision_device_key=row["provision_device_key"], provision_device_secret=secret,
            certificate_regex=row["certificate_regex"], allow_create_by_x509=None if allow is None else bool(allow),
            mqtt_topics=_topic_settings(row))

    def row(self, name_or_id: str, by_id: bool = False) -> dict:
        if by_id:
            row = self._store.profile(id=name_or_id)
            if row is None:
                raise NotFoundError(f"Device profile with id [{name_or_id}] is not found")
            return row
        row = self._store.profile(name=name_or_id) or self._store.profile(id=name_or_id)
        if row is None:
            raise NotFoundError(f"Device profile {name_or_id!r} not found")
        return row

    def get(self, name_or_id: str, *, by_id: bool = False) -> DeviceProfile:
        """`by_id`: `name_or_id` is an id only, never a name (REST paths)."""
        return self.from_row(self.row(name_or_id, by_id))

    def by_provision_key(self, key: str | None) -> DeviceProfile | None:
        row = self._store.profile(key=key) if key else None
        return self.from_row(row) if row else None

    def list(self, *, offset: int = 0, limit: int | None = None, name_contains: str | None = None,
             order_by: str = "name", descending: bool = False) -> list[DeviceProfile]:
        """`order_by`: name, created_time or description."""
        check_order(order_by, PROFILE_SORT_KEYS)
        return [self.from_row(row) for row in self._store.profiles(
            offset=offset, limit=-1 if limit is None else limit, name_contains=name_contains, order_by=order_by,
            descending=descending)]

    def chain_profiles(self) -> list[DeviceProfile]:
        """The X.509 certificate-chain profiles."""
        return [self.from_row(row)
                for row in self._store.profiles(provision_type=ProvisionType.X509_CERTIFICATE_CHAIN.value)]

    def topic_settings(self) -> dict[str, MqttTopicSettings | None]:
        """Every profile's MQTT topic settings by profile id (None: the DEFAULT transport)."""
        return {row["id"]: _topic_settings(row) for row in self._store.profile_topic_settings()}

    def count(self, *, name_contains: str | None = None) -> int:
        return self._store.count_profiles(name_contains=name_contains)

    def default(self) -> DeviceProfile:
        return self.from_row(self._store.default_profile())

    def set_default(self, name_or_id: str, *, by_id: bool = False) -> DeviceProfile:
        with self._store.transaction():
            row = self.row(name_or_id, by_id)
            self._store.clear_default_profile()
            self._store.update_profile(row["id"], {"is_default": 1})
        return self.get(row["id"], by_id=True)

    def delete(self, name_or_id: str, *, by_id: bool = False) -> None:
        with self._store.transaction():
            row = self.row(name_or_id, by_id)
            if row["is_default"]:
                raise ValidationError("Deletion of Default Device Profile is prohibited!")
            if self._store.count_devices_in_profile(row["id"]):
                raise ValidationError("The device profile referenced by the devices cannot be deleted!")
            self._store.delete_profile(row["id"])

    def named_or_created(self, name: str | None) -> dict:
        """The row of the profile of that name, created (DISABLED) if missing, as ThingsBoard
        does when a device names a profile type; no name: the default profile."""
        if not name or not name.strip():
            return self._store.default_profile()
        name = profile_name(name)
        return self._store.profile(name=name) or self._store.profile(id=self.insert(name, ProvisionType.DISABLED))

    def for_new_device(self, profile_id: str | None, profile_type: str | None) -> dict:
        """ThingsBoard's saveDevice: the profile of that id, else of that name (created if
        missing), else the default."""
        if profile_id:
            row = self._store.profile(id=profile_id)
            if row is None:
                raise ValidationError("Device is referencing non existing device profile!", field="profile")
            return row
        return self.named_or_created(profile_type)


def _x509_chain_columns(ca_pem: str | None, cn_regex: str, allow_create: bool) -> dict:
    if not ca_pem:
        raise ValidationError("An X509_CERTIFICATE_CHAIN profile needs a CA certificate", field="ca_certificate")
    try:
        blocks = certificates.split_pem_certificates(ca_pem)
        certificates.parse_certificate(blocks[0])
    except certificates.CertificateError as e:
        raise ValidationError(f"Invalid CA certificate: {e}", field="ca_certificate") from None
    try:
        if re.compile(cn_regex).groups < 1:
            raise ValidationError("The CN regex needs a capture group for the device name, e.g. (.*)",
                                  field="cn_regex")
    except re.error as e:
        raise ValidationError(f"Invalid CN regex: {e}", field="cn_regex") from None
    normalised = "\n".join(blocks)
    return {"provision_device_key": sha3_hash(blocks[0]), "ca_certificate_pem": normalised,
            "certificate_regex": cn_regex, "allow_create_by_x509": int(bool(allow_create))}


def _topic_columns(transport: MqttTopicSettings | None) -> dict:
    if transport is None:
        return dict.fromkeys(("mqtt_telemetry_topic", "mqtt_attributes_topic", "mqtt_attributes_subscribe_topic",
                              "mqtt_send_ack_on_validation_exception"))
    return {"mqtt_telemetry_topic": transport.telemetry_topic, "mqtt_attributes_topic": transport.attributes_topic,
            "mqtt_attributes_subscribe_topic": transport.attributes_subscribe_topic,
            "mqtt_send_ack_on_validation_exception": int(transport.send_ack_on_validation_exception)}


def _topic_settings(row: dict) -> MqttTopicSettings | None:
    if row["mqtt_telemetry_topic"] is None:
        return None
    return MqttTopicSettings(row["mqtt_telemetry_topic"], row["mqtt_attributes_topic"],
                         row["mqtt_attributes_subscribe_topic"], bool(row["mqtt_send_ack_on_validation_exception"]))
