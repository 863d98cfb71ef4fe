"""What long-running processes poll to notice changes made by others: a cheap change counter,
credentials versions (sessions whose credentials changed must end), new trust anchors for the
TLS listener."""
from __future__ import annotations

from collections.abc import Iterable

from .context import RegistryContext
from .profiles import Profiles


class ChangeWatch:
    def __init__(self, context: RegistryContext, profiles: Profiles):
        self._store = context.store
        self._profiles = profiles

    def change_counter(self) -> int:
        """A number that changes when another process commits a change (cheap to poll)."""
        return self._store.data_version()

    def credentials_generation(self) -> int:
        """Changes whenever any device's credentials change or go away, or a device changes
        (in any process): what caches of logins compare."""
        return self._store.credentials_generation()

    def credentials_versions(self, device_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """device id -> (credentials id, version) for the devices that still exist; a device
        whose entry changed or vanished must be logged out."""
        return self._store.credentials_versions(list(device_ids))

    def new_trust_anchors(self, known: set[str]) -> dict[str, str]:
        """Certificates the TLS listener must trust for X.509 devices to complete the handshake
        — the X.509-chain profiles' CAs and every registered device certificate — keyed by
        their SHA3 id, leaving out the ids in `known` (the listener keeps what it loaded).
        Values are PEM or Base64 DER text."""
        anchors = {profile.provision_device_key: profile.provision_device_secret
                   for profile in self._profiles.chain_profiles() if profile.provision_device_key not in known}
        anchors.update(self._store.x509_certificates([i for i in self._store.x509_certificate_ids()
                                                      if i not in known]))
        return anchors
