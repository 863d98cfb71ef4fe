"""What the Gatehouse plugin keeps about each MQTT session: the keys of amqtt's
`session.attributes` it uses, the roles a login gives, and the MQTT transport settings of a
device session's profile."""
from __future__ import annotations

from amqtt.session import Session

from gatehouse.mqtt_topic_settings import MqttTopicSettings
from gatehouse.registry import Registry

from .registry_worker import RegistryWorker

# session.attributes keys (amqtt shares the dict between plugins, hence the prefix)
ROLE = "gatehouse.role"
DEVICE = "gatehouse.device"
CREDENTIALS_VERSION = "gatehouse.credentials_version"
SUBSCRIPTIONS = "gatehouse.subscriptions"  # granted filter -> QoS
CLIENT_RPC_REPLIES = "gatehouse.client_rpc_replies"  # request id -> reply topic
PROVISION_CLOSE_TIMER = "gatehouse.provision_close_timer"

ROLE_DEVICE, ROLE_PROVISION, ROLE_APPLICATION, ROLE_SERVICE = "device", "provision", "application", "service"
# Roles that use the application namespace, gatehouse/devices/#.
NAMESPACE_ROLES = (ROLE_APPLICATION, ROLE_SERVICE)


class ProfileTransports:
    """Each profile's MQTT transport settings (None: DEFAULT), reloaded on any change."""

    def __init__(self, worker: RegistryWorker):
        self._worker = worker
        self._by_profile: dict[str, MqttTopicSettings | None] = {}

    async def reload(self) -> None:
        self._by_profile = await self._worker.read(Registry.profile_topic_settings)

    async def know(self, profile_id: str) -> None:
        """Reload if `profile_id` is a profile newer than the last reload."""
        if profile_id not in self._by_profile:
            await self.reload()

    def of(self, session: Session) -> MqttTopicSettings | None:
        """The MQTT transport settings of a device session's profile."""
        return self._by_profile.get(session.attributes[DEVICE].profile_id)
