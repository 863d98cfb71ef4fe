"""Domain records, with ThingsBoard's JSON field names where they leave the process."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .mqtt_topic_settings import MqttTopicSettings


class CredentialsType(str, enum.Enum):
    ACCESS_TOKEN = "ACCESS_TOKEN"
    MQTT_BASIC = "MQTT_BASIC"
    X509_CERTIFICATE = "X509_CERTIFICATE"


class ProvisionType(str, enum.Enum):
    DISABLED = "DISABLED"
    ALLOW_CREATE_NEW_DEVICES = "ALLOW_CREATE_NEW_DEVICES"
    CHECK_PRE_PROVISIONED_DEVICES = "CHECK_PRE_PROVISIONED_DEVICES"
    X509_CERTIFICATE_CHAIN = "X509_CERTIFICATE_CHAIN"


class AttributeScope(str, enum.Enum):
    CLIENT = "CLIENT_SCOPE"
    SHARED = "SHARED_SCOPE"
    SERVER = "SERVER_SCOPE"


@dataclass(frozen=True)
class DeviceProfile:
    id: str
    created_time: int
    name: str
    description: str | None
    is_default: bool
    provision_type: ProvisionType
    provision_device_key: str | None
    # Key/secret strategies: the secret; X509_CERTIFICATE_CHAIN: the CA certificate PEM
    # (ThingsBoard keeps both in provisionConfiguration.provisionDeviceSecret).
    provision_device_secret: str | None
    certificate_regex: str | None = None
    allow_create_by_x509: bool | None = None
    mqtt_topics: MqttTopicSettings | None = None  # None: ThingsBoard's DEFAULT transport

    @property
    def transport_type(self) -> str:
        return "DEFAULT" if self.mqtt_topics is None else "MQTT"

    def to_json(self) -> dict:
        configuration: dict = {
            "type": self.provision_type.value,
            "provisionDeviceSecret": self.provision_device_secret,
        }
        if self.provision_type is ProvisionType.X509_CERTIFICATE_CHAIN:
            configuration["certificateRegExPattern"] = self.certificate_regex
            configuration["allowCreateNewDevicesByX509Certificate"] = self.allow_create_by_x509
        return {
            "id": {"entityType": "DEVICE_PROFILE", "id": self.id},
            "createdTime": self.created_time,
            "name": self.name,
            "description": self.description,
            "default": self.is_default,
            "type": "DEFAULT",
            "transportType": self.transport_type,
            "provisionType": self.provision_type.value,
            "provisionDeviceKey": self.provision_device_key,
            "profileData": {
                "configuration": {"type": "DEFAULT"},
                "transportConfiguration": ({"type": "DEFAULT"} if self.mqtt_topics is None
                                           else self.mqtt_topics.to_json()),
                "provisionConfiguration": configuration,
            },
        }


@dataclass(frozen=True)
class Device:
    id: str
    created_time: int
    name: str
    profile_id: str
    profile_name: str
    label: str | None = None
    additional_info: dict = field(default_factory=dict)
    credentials_type: CredentialsType | None = None  # for lists; not part of ThingsBoard's Device JSON

    @property
    def is_gateway(self) -> bool:
        return self.additional_info.get("gateway") is True

    def to_json(self) -> dict:
        return {
            "id": {"entityType": "DEVICE", "id": self.id},
            "createdTime": self.created_time,
            "name": self.name,
            "type": self.profile_name,
            "label": self.label,
            "deviceProfileId": {"entityType": "DEVICE_PROFILE", "id": self.profile_id},
            "additionalInfo": self.additional_info,
        }


@dataclass(frozen=True)
class DeviceCredentials:
    """A device's credentials as the admin API shows them (secrets revealed)."""

    id: str
    device_id: str
    credentials_type: CredentialsType
    credentials_id: str
    credentials_value: str | None

    def to_json(self) -> dict:
        return {
            "id": {"id": self.id},
            "deviceId": {"entityType": "DEVICE", "id": self.device_id},
            "credentialsType": self.credentials_type.value,
            "credentialsId": self.credentials_id,
            "credentialsValue": self.credentials_value,
        }


_JAVA_TRIM = "".join(map(chr, range(0x21)))


def java_trim(text: str) -> str:
    """Java's String.trim, which ThingsBoard applies to names and keys: it strips every
    character up to U+0020 and nothing else (str.strip would also strip U+0085, U+00A0, ...)."""
    return text.strip(_JAVA_TRIM)
