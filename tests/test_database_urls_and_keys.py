"""Which database a deployment uses (`--database URL`), whether a server key belongs to it, and
what a store says when its server cannot be reached; on both stores where both apply."""
import time

import pytest
from click.testing import CliRunner

from gatehouse.cli import main
from gatehouse.credentials import AccessToken
from gatehouse.data_dir import DataDir, redacted_url
from gatehouse.errors import StoreUnavailable, ValidationError
from gatehouse.payloads import parse_telemetry
from gatehouse.registry import Registry
from gatehouse.server_key import ServerKey, ServerKeyError
from gatehouse.storage import DatabaseUrl, open_store
from gatehouse.storage.postgresql import PostgresStore

from .postgres_cluster import free_port

pytestmark = pytest.mark.both_stores


def test_a_server_key_of_another_deployment_is_refused_before_anything_is_served(registry, deployment, tmp_path):
    registry.create_device("thermo", credentials=AccessToken("T1"))
    other_key = tmp_path / "other.key"
    ServerKey.load_or_create(other_key)
    with pytest.raises(ServerKeyError, match="every Gatehouse process of a deployment must use the same key"):
        Registry.open(DataDir(deployment.root, deployment.database_url, other_key))
    # The same key from another path (a copy on another node) opens it.
    copy = tmp_path / "copy.key"
    copy.write_bytes(deployment.server_key.read_bytes())
    with Registry.open(DataDir(deployment.root, deployment.database_url, copy)) as same:
        assert same.token_login("T1").name == "thermo"


def test_the_cli_refuses_another_key_in_one_line(registry, deployment, tmp_path):
    other_key = tmp_path / "other.key"
    ServerKey.load_or_create(other_key)
    result = CliRunner().invoke(main, [*deployment.command_options(), "--server-key-file", str(other_key),
                                       "device", "list"], env=deployment.environment())
    assert result.exit_code == 1
    assert result.output.startswith("Error: the server key does not open the secrets of the database")
    assert "Traceback" not in result.output


def test_values_of_every_kind_come_back_as_stored(registry):
    device = registry.create_device("kinds")
    registry.save_telemetry(device.id, parse_telemetry(
        b'{"ts": 1000, "values": {"b": true, "l": 9223372036854775807, "d": 0.1, "s": "1e5", "t": " 12 ",'
        b' "n": "nul\\u0000inside", "j": {"a": [1, 2.5]}}}'))
    latest = registry.latest_telemetry(device.id)
    assert {key: point["value"] for key, point in latest.items()} == {
        "b": True, "l": 9223372036854775807, "d": 0.1, "s": "1e5", "t": " 12 ", "n": "nul\x00inside",
        "j": {"a": [1, 2.5]}}


def test_a_change_made_through_another_store_moves_the_change_counter(registry, deployment):
    before = registry.change_counter()
    with Registry.open(deployment) as other:
        other.create_device("elsewhere")
    deadline = time.monotonic() + 5
    while registry.change_counter() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.change_counter() != before


def test_an_unsupported_database_url_is_a_one_line_error_without_its_password(tmp_path):
    with pytest.raises(ValidationError, match="unsupported database URL"):
        DatabaseUrl.parse("mysql://admin:hunter2@db/gatehouse")
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "--database", "mysql://admin:hunter2@db/g", "init"])
    assert result.exit_code == 1 and result.output.startswith("Error: unsupported database URL")
    assert "hunter2" not in result.output


def test_a_postgresql_server_that_cannot_be_reached_is_unavailable_and_its_password_never_shown():
    url = f"postgresql://gatehouse:hunter2@127.0.0.1:{free_port()}/gatehouse"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        open_store(url)
    assert time.monotonic() - started < 30
    assert "hunter2" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    assert redacted_url(url) == url.replace("hunter2", "***")


def test_telemetry_does_not_notify_but_a_credentials_change_does(postgres_url):
    listener, writer = PostgresStore(postgres_url), PostgresStore(postgres_url)
    key = ServerKey.generate()
    try:
        registry = Registry(writer, key)
        device = registry.create_device("watched", credentials=AccessToken("W1"))
        seen = _settled(listener)
        registry.save_telemetry(device.id, parse_telemetry(b'{"t": 1}'))
        assert _settled(listener) == seen
        registry.set_credentials(device.id, AccessToken("W2"))
        assert _settled(listener) > seen
    finally:
        listener.close()
        writer.close()


def _settled(store: PostgresStore) -> int:
    """The listener's count once notifications already sent have arrived."""
    time.sleep(0.3)
    return store.data_version()


def test_a_command_against_an_unreachable_database_says_so_in_one_line(tmp_path):
    url = f"postgresql://gatehouse:hunter2@127.0.0.1:{free_port()}/gatehouse"
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), "init"], env={"GATEHOUSE_DATABASE_URL": url})
    assert result.exit_code == 1
    assert result.output == f"Error: cannot reach the PostgreSQL database {redacted_url(url)}\n"
