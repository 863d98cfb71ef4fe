"""The test suite's throwaway PostgreSQL cluster (tests/postgres_cluster.py): password logins over
TCP, fresh databases, stopping and restarting with the data kept, and a server that never runs
as root."""
from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from .postgres_cluster import PostgresCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = PostgresCluster.start_new(tmp_path_factory.mktemp("postgres"))
    yield cluster
    cluster.destroy()


@pytest.fixture
def running(cluster):
    """The module's cluster, started again after a test that stopped or killed it."""
    yield cluster
    cluster.start()


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid; then effective, saved, filesystem
    raise AssertionError(f"no Uid line for process {pid}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"


def test_the_superuser_logs_in_with_its_password_over_tcp(cluster):
    with psycopg.connect(cluster.url(), connect_timeout=5) as conn:
        user, port, over_tcp = conn.execute("SELECT current_user, inet_server_port(), "
                                            "inet_server_addr() IS NOT NULL").fetchone()
        assert (user, port, over_tcp) == ("gatehouse", cluster.port, True)  # not over a unix socket
        assert conn.info.host == "127.0.0.1"


def test_a_wrong_password_is_refused(cluster):
    wrong = cluster.url().replace(cluster.password, "not-" + cluster.password)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_created_databases_are_distinct_and_empty(cluster):
    first, second = cluster.create_database(), cluster.create_database()
    try:
        assert first != second
        with psycopg.connect(first) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
            conn.execute("CREATE TABLE devices (name text)")
        with psycopg.connect(second) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
            assert conn.execute("SELECT current_database()").fetchone()[0] == second.rsplit("/", 1)[1]
    finally:
        cluster.drop_database(first)
        cluster.drop_database(second)
    with psycopg.connect(cluster.url()) as conn:
        names = {first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]}
        assert conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", [list(names)]).fetchall() == []


def test_committed_data_survives_a_stop_and_a_start_on_the_same_port(running):
    cluster = running
    url, port = cluster.create_database(), cluster.port
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE devices (name text)")
        conn.execute("INSERT INTO devices VALUES ('thermometer')")
    cluster.stop()
    assert not cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    cluster.start()
    assert cluster.port == port
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM devices").fetchall() == [("thermometer",)]
    cluster.drop_database(url)


def test_after_a_kill_a_start_recovers_committed_data(running):
    cluster = running
    url = cluster.create_database()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE devices (name text)")
        conn.execute("INSERT INTO devices VALUES ('thermometer')")
        conn.commit()
        server_processes = [cluster.pid, *children_of(cluster.pid)]
        cluster.kill()
        assert not cluster.running
        assert [pid for pid in server_processes if alive(pid)] == []  # the backends too
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    cluster.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM devices").fetchall() == [("thermometer",)]
    assert "database system was interrupted" in cluster.log()
    cluster.drop_database(url)


def test_no_server_process_runs_as_root(cluster):
    with psycopg.connect(cluster.url()):  # a backend, besides the postmaster's own helpers
        processes = [cluster.pid, *children_of(cluster.pid)]
        uids = {uid_of(pid) for pid in processes}
    assert len(processes) > 2
    assert 0 not in uids
    expected = cluster.account.uid if cluster.account else os.getuid()
    assert uids == {expected}


def test_the_cluster_runs_with_its_test_settings(cluster):
    with psycopg.connect(cluster.url()) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [["fsync", "full_page_writes", "synchronous_commit", "max_connections", "listen_addresses",
              "unix_socket_directories", "server_encoding", "lc_collate"]]).fetchall())
    assert settings == {
        "fsync": "off", "full_page_writes": "off", "synchronous_commit": "on", "max_connections": "300",
        "listen_addresses": "127.0.0.1", "unix_socket_directories": str(cluster.socket_dir),
        "server_encoding": "UTF8", "lc_collate": "C",
    }
    assert cluster.socket_dir.is_relative_to(cluster.directory)
    assert cluster.log_path.is_relative_to(cluster.directory) and "ready to accept connections" in cluster.log()
