"""A throwaway PostgreSQL cluster for the test suite: Debian's server binaries, a new cluster in a
temporary directory, a server on 127.0.0.1 and a free port with a generated superuser password,
and what tests need of it: fresh databases, stopping, restarting, killing, and its log.

initdb and postgres refuse to run as root, and CI runs the suite as root: then the cluster's
directory belongs to an unprivileged account (`postgres` if it exists, else `nobody`) and every
server process runs as that account. The server is a child of the test process (not detached the
way `pg_ctl start` detaches it), so the test process reaps it and can signal it directly.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

DEBIAN_POSTGRESQL = Path("/usr/lib/postgresql")
SUPERUSER = "gatehouse"
HOST = "127.0.0.1"
# The longest path of a unix socket (sun_path, 108 bytes with its terminating NUL).
_MAX_SOCKET_PATH = 107
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

# The cluster's settings (written to data/gatehouse.conf, which postgresql.conf includes).
# The cluster holds test data only and is thrown away after the run, so nothing needs to survive
# a crash of the machine: fsync and full-page writes, which protect against exactly that, are off,
# and commits and checkpoints no longer wait for the disk.
# synchronous_commit stays on, though: with fsync off, a synchronous commit costs one write() to
# the page cache (measured: no difference in commits per second), whereas synchronous_commit=off
# lets the server acknowledge commits whose WAL is still in its shared memory, and a kill() then
# loses them (measured: about 50 of the last 200 single-row commits per kill). Committed data
# surviving a crash of the server is what the fault tests check.
SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "max_connections": "300",
    "log_destination": "'stderr'",  # to postgres.log in the cluster's directory
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}


def find_bin_dir() -> Path:
    """The newest major version's server binaries among Debian's /usr/lib/postgresql/<major>/bin."""
    found = sorted(
        (int(path.parent.parent.name), path.parent)
        for path in DEBIAN_POSTGRESQL.glob("*/bin/postgres")
        if path.parent.parent.name.isdigit()
    )
    if not found:
        raise RuntimeError(
            f"no PostgreSQL server binaries in {DEBIAN_POSTGRESQL}/<major>/bin: the tests that use "
            "a PostgreSQL cluster need the Debian package `postgresql` (apt-get install postgresql)"
        )
    return found[-1][1]


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class _Account:
    """The unprivileged account root runs the server commands as (its uid, gid and supplementary
    groups); a cluster started by any other user has none and runs them as that user."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def unprivileged(cls) -> _Account:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(name, entry.pw_uid, entry.pw_gid,
                           tuple(os.getgrouplist(name, entry.pw_gid)))
        raise RuntimeError("running as root, and there is neither a `postgres` nor a `nobody` account "
                           "to run the PostgreSQL server as (initdb and postgres refuse root)")

    def popen_options(self) -> dict:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def can_traverse(self, path: Path) -> bool:
        """Whether this account can reach into `path` (search permission on it and every parent;
        plain mode bits, ACLs aside)."""
        path = path.resolve()
        for directory in [path, *path.parents]:
            try:
                info = directory.stat()
            except OSError:
                return False
            if info.st_uid == self.uid:
                allowed = info.st_mode & stat.S_IXUSR
            elif info.st_gid in self.groups or info.st_gid == self.gid:
                allowed = info.st_mode & stat.S_IXGRP
            else:
                allowed = info.st_mode & stat.S_IXOTH
            if not allowed:
                return False
        return True


def _server_env() -> dict[str, str]:
    # libpq's PG* variables (PGDATA, PGPORT, PGHOST, ...) of whoever runs the tests must not
    # reach initdb or postgres.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of process `pid` from /proc, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # pid (comm) state ppid ... starttime (field 22): comm may hold spaces and parentheses
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> dict[int, int]:
    """The processes whose parent is `pid`: {pid: start time}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) and info[1] == pid:
            found[int(entry.name)] = info[2]
    return found


def _alive(pid: int, start_time: int) -> bool:
    """Whether process `pid`, started at `start_time` (not a later one given the same pid), is
    still there and not a zombie."""
    info = _stat(pid)
    return info is not None and info[0] != "Z" and info[2] == start_time


class PostgresCluster:
    """A PostgreSQL cluster of its own in `directory` (data/, sockets/, postgres.log), served on
    127.0.0.1:`port` to the superuser `gatehouse` with a generated `password`.

    Start one with `PostgresCluster.start_new(root)`; `destroy()` stops it and removes its files
    (a cluster still there when the interpreter exits is destroyed then)."""

    def __init__(self, directory: Path, port: int, password: str, *, bin_dir: Path,
                 account: _Account | None, settings: Mapping[str, str] | None = None):
        self.directory = directory
        self.data_dir = directory / "data"
        self.socket_dir = directory / "sockets"
        self.log_path = directory / "postgres.log"
        self.port = port
        self.password = password
        self.bin_dir = bin_dir
        self.account = account
        self.settings = dict(settings or {})
        self._process: subprocess.Popen | None = None
        self._destroyed = False

    # -- creating and starting ---------------------------------------------------------------

    @classmethod
    def start_new(cls, root: Path, *, settings: Mapping[str, str] | None = None) -> PostgresCluster:
        """A new cluster in a new temporary directory under `root` (or under the system's temporary
        directory when the unprivileged account could not reach `root`, as it cannot pytest's
        0700 directories of root), started and accepting connections. `settings` add to or
        override SETTINGS, as postgresql.conf values: {"synchronous_commit": "off"}."""
        bin_dir = find_bin_dir()
        account = _Account.unprivileged() if os.geteuid() == 0 else None
        directory = Path(tempfile.mkdtemp(prefix="gatehouse-pg-", dir=cls._parent_for(Path(root), account)))
        cluster = cls(directory, free_port(), secrets.token_urlsafe(24), bin_dir=bin_dir, account=account,
                      settings=settings)
        try:
            cluster._initdb()
            cluster._start_on_a_free_port()
        except BaseException:
            cluster.destroy()
            raise
        atexit.register(cluster.destroy)
        return cluster

    @staticmethod
    def _parent_for(root: Path, account: _Account | None) -> Path:
        """`root`, unless the account could not reach it or the socket's path,
        <root>/gatehouse-pg-XXXXXXXX/sockets/.s.PGSQL.NNNNN, would be too long: then the system's
        temporary directory."""
        root.mkdir(parents=True, exist_ok=True)
        for parent in (root, Path(tempfile.gettempdir()), Path("/tmp")):
            too_long = len(f"{parent.resolve()}/gatehouse-pg-XXXXXXXX/sockets/.s.PGSQL.65535") > _MAX_SOCKET_PATH
            if not too_long and (account is None or account.can_traverse(parent)):
                return parent
        return Path("/tmp")

    def _initdb(self) -> None:
        self.directory.chmod(0o755)
        if self.account:
            os.chown(self.directory, self.account.uid, self.account.gid)
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self.socket_dir.mkdir(mode=0o700)
        if self.account:
            os.chown(pwfile, self.account.uid, self.account.gid)
            os.chown(self.socket_dir, self.account.uid, self.account.gid)
        try:
            self._run([
                str(self.bin_dir / "initdb"), "--pgdata", str(self.data_dir),
                "--encoding", "UTF8", "--locale", "C",
                "--auth-local", "trust", "--auth-host", "scram-sha-256",
                "--username", SUPERUSER, "--pwfile", str(pwfile),
                # nothing of a throwaway cluster needs to reach the disk (see SETTINGS)
                "--no-sync", "--no-instructions",
            ])
        finally:
            pwfile.unlink()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'gatehouse.conf'\n")
        self._write_settings()

    def _write_settings(self) -> None:
        settings = {"listen_addresses": f"'{HOST}'", "port": str(self.port),
                    "unix_socket_directories": f"'{self.socket_dir}'", **SETTINGS, **self.settings}
        path = self.data_dir / "gatehouse.conf"
        path.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
        if self.account:
            os.chown(path, self.account.uid, self.account.gid)

    def _start_on_a_free_port(self, attempts: int = 5) -> None:
        # The port was free when picked; something may have taken it since.
        for attempt in range(attempts):
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == attempts - 1 or "Address already in use" not in self.log():
                    raise
            self.port = free_port()
            self._write_settings()

    def start(self, timeout: float = 30) -> None:
        """Start the server (again: same data, same port) and wait until it accepts connections."""
        if self._destroyed:
            raise RuntimeError(f"the cluster in {self.directory} was destroyed")
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # a session of its own: a Ctrl-C meant for pytest does not reach it
                start_new_session=True,
                cwd=self.directory, env=_server_env(), **self._account_options(),
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if (status := self._process.poll()) is not None:
                self._process = None
                raise RuntimeError(f"PostgreSQL did not start (exit status {status}):\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"PostgreSQL did not accept connections within {timeout} s:\n{self.log()}")
            time.sleep(0.01)

    def _ready(self) -> bool:
        """Whether the postmaster this object started reports itself ready in postmaster.pid
        (what `pg_ctl -w` waits for: its pid on line 1, "ready" on line 8)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return (len(lines) >= 8 and lines[0].strip() == str(self._process.pid)
                and lines[7].strip() == "ready")

    # -- connecting --------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self) -> str:
        """A new, empty database of a name of its own: its URL."""
        name = f"gatehouse_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database `url` names (closing any connections to it still open)."""
        name = conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- stopping ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._process.pid if self.running else None

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Shut the server down, the way `pg_ctl stop -m MODE` does: "smart" waits for clients to
        disconnect, "fast" disconnects them, "immediate" exits without a checkpoint (the next
        start recovers). Waits until the postmaster has exited; does nothing if it is not running."""
        if not self.running:
            self._process = None
            return
        self._process.send_signal(_STOP_SIGNALS[mode])
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"PostgreSQL did not stop ({mode}) within {timeout} s:\n{self.log()}") from None
        self._process = None

    def kill(self, timeout: float = 10) -> None:
        """Kill the server, as a crash would: SIGKILL to the postmaster and to every process of its
        (backends, background writer, ...: all its children), and wait until all are gone. start()
        then recovers the cluster from its WAL. Does nothing if it is not running."""
        if not self.running:
            self._process = None
            return
        postmaster = self._process.pid
        # Stopped, the postmaster forks no new backend between listing its children and the kill.
        os.kill(postmaster, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while (info := _stat(postmaster)) and info[0] not in "TtZ":
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
        children = _children(postmaster)
        self._process.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._process.wait()
        self._process = None
        # The children are orphans now, reaped by init; gone once they are zombies.
        deadline = time.monotonic() + timeout
        while alive := [pid for pid, start_time in children.items() if _alive(pid, start_time)]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL server processes {alive} outlived a SIGKILL by {timeout} s")
            time.sleep(0.001)

    def destroy(self) -> None:
        """Stop the server (killing it if it does not stop) and remove all of the cluster's files."""
        if self._destroyed:
            return
        self._destroyed = True
        atexit.unregister(self.destroy)
        try:
            self.stop("immediate", timeout=10)
        except RuntimeError:
            pass  # stop() killed it
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<PostgresCluster {self.directory} on {HOST}:{self.port}{'' if self.running else ' (stopped)'}>"

    # -- running the server's commands -------------------------------------------------------

    def _account_options(self) -> dict:
        return self.account.popen_options() if self.account else {}

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                cwd=self.directory, env=_server_env(), **self._account_options())
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
