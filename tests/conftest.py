import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatehouse.data_dir import DataDir
from gatehouse.registry import Registry

from . import mqtt_client
from .postgres_cluster import PostgresCluster

# Unbuffered, so a test reads lines as they are printed; a fault handler, so a crash leaves a
# traceback in the log instead of only a closed socket.
CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


@pytest.fixture(autouse=True)
def _close_mqtt_clients():
    yield
    mqtt_client.close_all()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


# --- the stores: SQLite, and PostgreSQL in a throwaway cluster -------------------------------------

STORES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """Test modules marked `both_stores` run each test that uses the store (the `registry` or
    `deployment` fixtures) once on SQLite and once on PostgreSQL."""
    own = any("store" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize"))
    if metafunc.definition.get_closest_marker("both_stores") and "store" in metafunc.fixturenames and not own:
        metafunc.parametrize("store", STORES, indirect=True)


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory) -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the whole run (Debian's postgresql, run as an unprivileged user)."""
    cluster = PostgresCluster.start_new(tmp_path_factory.mktemp("postgres"))
    yield cluster
    cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster) -> Iterator[str]:
    """A fresh, empty database of its own for one test."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture(scope="module", params=STORES)
def module_database_url(request) -> Iterator[str | None]:
    """For a module-scoped deployment that runs once on each store: None (SQLite in the data
    dir), then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)


@pytest.fixture
def store(request) -> str:
    """Which store the test's deployment uses: SQLite unless a `both_stores` module asks for both."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def deployment(store, data_dir, request) -> DataDir:
    """The test's data dir and its database: gatehouse.db in it, or a fresh PostgreSQL database."""
    if store == "postgresql":
        return DataDir(data_dir, request.getfixturevalue("postgres_url"))
    return DataDir(data_dir)


@pytest.fixture
def registry(deployment):
    with Registry.initialise(deployment) as registry:
        yield registry


class _ProcessHandle:
    """A started Gatehouse process (`process`, `log_path`): its log, and stopping it."""

    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def _spawn(data_dir: DataDir | Path, argv: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m gatehouse --data-dir DATA_DIR ARGV` (its database URL in the environment, as
    `gatehouse up` passes it), its output (stdout and stderr) in `log_path`."""
    data_dir = DataDir.of(data_dir)
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "gatehouse", *data_dir.command_options(), *argv],
                                stdout=log_file, stderr=subprocess.STDOUT, env={**CHILD_ENV, **data_dir.environment()})


@dataclass
class RunningBroker(_ProcessHandle):
    """A real `gatehouse broker` process on free ports, for tests that use real MQTT clients."""

    process: subprocess.Popen
    data_dir: DataDir | Path
    host: str
    mqtt_port: int
    mqtts_port: int
    log_path: Path
    metrics_port: int | None = None

    @property
    def ca_cert(self) -> Path:
        return DataDir.of(self.data_dir).pki / "ca.pem"



def start_broker(data_dir: DataDir | Path, log_path: Path, *extra: str, timeout: float = 20) -> RunningBroker:
    """Start `gatehouse broker` on ports chosen by the OS and wait until it listens."""
    Registry.initialise(data_dir).close()
    process = _spawn(data_dir, ["broker", "--host", "127.0.0.1", "--mqtt-port", "0",
                      "--mqtts-port", "0", "--metrics-port", "0", *extra], log_path)
    deadline = time.monotonic() + timeout
    ports = {}
    while time.monotonic() < deadline and len(ports) < 3:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}:\n{log_path.read_text()}")
        for line in log_path.read_text().splitlines():
            for name in ("MQTT ", "MQTTS", "METRICS"):
                if line.startswith(f"{name} listening on "):
                    ports[name] = int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    if len(ports) < 3:
        process.kill()
        raise RuntimeError(f"broker did not start in {timeout} s:\n{log_path.read_text()}")
    return RunningBroker(process, data_dir, "127.0.0.1", ports["MQTT "], ports["MQTTS"], log_path, ports["METRICS"])


def operator_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """An operator's own server certificate for `--tls-cert/--tls-key`, from a CA of its own
    rather than the data dir's development CA: (CA, certificate, key) files in `directory`."""
    from gatehouse import pki

    ca, ca_key = pki.create_ca("Operator CA")
    server, server_key = pki.issue_certificate(ca, ca_key, "gatehouse.example", client=False,
                                               server_names=["localhost", "127.0.0.1"])
    ca_file, cert_file, key_file = directory / "operator-ca.pem", directory / "operator.pem", directory / "operator.key"
    ca_file.write_text(pki.certificate_pem(ca))
    cert_file.write_text(pki.certificate_pem(server))
    pki.write_private_file(key_file, pki.private_key_pem(server_key))
    return ca_file, cert_file, key_file


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port free right now (TCP, or UDP with SOCK_DGRAM), for a process whose port another
    process must be told before it starts (amqtt's YAML config, the sidecar's broker under
    `gatehouse up`) or that cannot report it (libcoap's `-p`); a port-0 listener is used wherever
    the process reports the port it got."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningSidecar(_ProcessHandle):
    """A real `gatehouse sidecar` process (waitress) on a free port, linked to a broker."""

    process: subprocess.Popen
    data_dir: Path
    http_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"



def start_sidecar(broker: RunningBroker, log_path: Path, *extra: str, timeout: float = 20,
                  wait_for_broker: bool = True) -> RunningSidecar:
    """Start `gatehouse sidecar` on a port chosen by the OS, publishing to `broker`; wait until
    it listens and (by default) until the broker has its service session."""
    process = _spawn(broker.data_dir, ["sidecar", "--host", "127.0.0.1", "--http-port", "0",
                      "--broker-host", "127.0.0.1", "--broker-port", str(broker.mqtt_port), *extra], log_path)
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {process.returncode}:\n{log_path.read_text()}")
        text = log_path.read_text()
        for line in text.splitlines():
            if line.startswith("HTTP  listening on "):
                port = int(line.rsplit(":", 1)[1])
        if port is not None and (not wait_for_broker or "connected to the broker" in text):
            return RunningSidecar(process, broker.data_dir, port, log_path)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sidecar did not start in {timeout} s:\n{log_path.read_text()}")


# For modules that fail logins on purpose: the broker's and the sidecar's address blocking out of the way.
NO_BLOCKING = ("--max-failed-logins", "100000")


@contextlib.contextmanager
def module_broker(root: Path, *broker_options: str, database_url: str | None = None) -> Iterator[RunningBroker]:
    """A real broker for a test module (its data dir and log in `root`, its database there or at
    `database_url`), stopped after it."""
    data_dir = root / "data" if database_url is None else DataDir(root / "data", database_url)
    broker = start_broker(data_dir, root / "broker.log", *broker_options)
    try:
        yield broker
    finally:
        if broker.process.poll() is None:
            broker.stop()


@contextlib.contextmanager
def broker_and_sidecar(root: Path, *broker_options: str, sidecar_options: tuple[str, ...] = (),
                       database_url: str | None = None) -> Iterator[tuple[RunningBroker, RunningSidecar]]:
    """A real broker and a real sidecar linked to it, for a test module; both are stopped after
    it, and a broker whose sidecar did not start is stopped too."""
    with module_broker(root, *broker_options, database_url=database_url) as broker:
        sidecar = start_sidecar(broker, root / "sidecar.log", *sidecar_options)
        try:
            yield broker, sidecar
        finally:
            if sidecar.process.poll() is None:
                sidecar.stop()


def _kill_all(started: list) -> None:
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


@pytest.fixture
def sidecar_factory(tmp_path):
    """Start sidecars for given brokers; all are stopped after the test."""
    started = []

    def start(broker: RunningBroker, *extra: str, **kwargs) -> RunningSidecar:
        running = start_sidecar(broker, tmp_path / f"sidecar-{len(started)}.log", *extra, **kwargs)
        started.append(running)
        return running

    yield start
    _kill_all(started)


@pytest.fixture
def broker_factory(tmp_path):
    """Start brokers with extra `gatehouse broker` options; all are stopped after the test."""
    started = []

    def start(*extra: str, data_dir: Path | None = None) -> RunningBroker:
        running = start_broker(data_dir or tmp_path / "data", tmp_path / f"broker-{len(started)}.log", *extra)
        started.append(running)
        return running

    yield start
    _kill_all(started)


@pytest.fixture
def clients():
    """MQTT clients a test opened (it appends them); all are closed afterwards."""
    opened = []
    yield opened
    for client in opened:
        with contextlib.suppress(OSError, RuntimeError):
            client.close()


@pytest.fixture
def broker(broker_factory):
    return broker_factory("--provision-close-seconds", "2")


LIBCOAP_CLIENTS = ("coap-client-notls", "coap-client-openssl", "coap-client-gnutls")


@pytest.fixture
def libcoap_clients():
    """Debian's libcoap clients are part of the test set-up (`make test` installs libcoap3-bin):
    a test that needs them fails without them, it is never skipped."""
    missing = [client for client in LIBCOAP_CLIENTS if shutil.which(client) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `make debian-test-packages` (libcoap3-bin)")


@dataclass
class RunningCoapBridge(_ProcessHandle):
    """A real `gatehouse coap` process on a port chosen by the OS, forwarding to a sidecar."""

    process: subprocess.Popen
    data_dir: Path
    coap_port: int
    coaps_port: int
    log_path: Path
    metrics_port: int | None = None

    def url(self, *path: str) -> str:
        return f"coap://127.0.0.1:{self.coap_port}/" + "/".join(path)

    def secure_url(self, *path: str) -> str:
        return f"coaps://127.0.0.1:{self.coaps_port}/" + "/".join(path)



def start_coap_bridge(data_dir: DataDir | Path, sidecar_url: str, log_path: Path, *extra: str,
                      timeout: float = 20) -> RunningCoapBridge:
    """Start `gatehouse coap` on a UDP port chosen by the OS and wait until it listens."""
    process = _spawn(data_dir, ["coap", "--host", "127.0.0.1", "--coap-port", "0",
                      "--coaps-port", "0", "--sidecar-url", sidecar_url, "--metrics-port", "0", *extra], log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"CoAP bridge exited with {process.returncode}:\n{log_path.read_text()}")
        ports = {line[:5]: int(line.rsplit(":", 1)[1]) for line in log_path.read_text().splitlines()
                 if line.startswith(("COAP  listening on ", "COAPS listening on ", "METRICS listening on "))}
        if len(ports) == 3:
            return RunningCoapBridge(process, data_dir, ports["COAP "], ports["COAPS"], log_path, ports["METRI"])
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"CoAP bridge did not start in {timeout} s:\n{log_path.read_text()}")
