"""Access-token logins kept in memory (gatehouse.token_logins): a kept device goes as soon as
credentials or devices change in any process, unknown tokens are never kept."""
from __future__ import annotations

import pytest

from gatehouse.credentials import AccessToken
from gatehouse.registry import Registry
from gatehouse.token_logins import TokenLogins

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores


@pytest.fixture
def data_dir(tmp_path):
    Registry.initialise(tmp_path).close()
    return tmp_path


@pytest.fixture
def registry(data_dir):
    with Registry.open(data_dir) as registry:
        yield registry


def test_a_token_logs_its_device_in_and_an_unknown_token_does_not(registry):
    device = registry.create_device("thermo", credentials=AccessToken("T1"))
    logins = TokenLogins()
    assert logins.login(registry, "T1") == device
    assert logins.login(registry, "nope") is None
    assert logins.login(registry, "") is None


def test_a_device_created_after_a_refusal_logs_in_at_once(registry):
    logins = TokenLogins(recheck_seconds=3600)
    assert logins.login(registry, "LATER") is None  # refusals are not kept
    registry.create_device("later", credentials=AccessToken("LATER"))
    assert logins.login(registry, "LATER") is not None


@pytest.mark.parametrize("change", ["rotate", "delete", "rename"])
def test_a_change_made_by_another_process_ends_the_kept_login(data_dir, registry, change):
    device = registry.create_device("gone-soon", credentials=AccessToken("OLD"))
    logins = TokenLogins(recheck_seconds=0)
    assert logins.login(registry, "OLD") == device
    with Registry.open(data_dir) as other:  # another connection: the CLI, the admin API, ...
        if change == "rotate":
            other.set_credentials(device.id, AccessToken("NEW"))
        elif change == "delete":
            other.delete_device(device.id)
        else:
            other.save_device("renamed", device_id=device.id)
    if change == "rename":
        assert logins.login(registry, "OLD").name == "renamed"
    else:
        assert logins.login(registry, "OLD") is None


def test_within_the_recheck_interval_the_kept_login_is_used_without_a_lookup(registry, monkeypatch):
    registry.create_device("cached", credentials=AccessToken("KEPT"))
    logins = TokenLogins(recheck_seconds=3600)
    assert logins.login(registry, "KEPT") is not None
    monkeypatch.setattr(registry, "token_login", lambda token: pytest.fail("looked up again"))
    assert logins.login(registry, "KEPT") is not None
