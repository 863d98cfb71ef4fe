"""`gatehouse up`: start every component as its own process, watch them, stop them together.

Each component is a `gatehouse` sub-command in a child process, so a crash in one cannot take
the others' state with it, and each can also be run alone. If one dies, the supervisor says which
and how, and stops the rest: a half-running system is worse than a stopped one. Each child says
when all its listeners are open (gatehouse.runtime.readiness, systemd's notify protocol); what to do next
is said only once every one of them has.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data_dir import DataDir
from ..login_limiter import DEFAULT_BLOCK_SECONDS, DEFAULT_MAX_FAILURES
from ..retention import AUDIT_RETENTION_DAYS, TELEMETRY_RETENTION_DAYS
from ..runtime import ports
from ..runtime.readiness import NOTIFY_SOCKET, ReadinessSocket

STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Settings:
    data_dir: DataDir | Path
    host: str = "0.0.0.0"
    mqtt_port: int = ports.MQTT_PORT
    mqtts_port: int = ports.MQTTS_PORT
    http_port: int = ports.HTTP_PORT
    coap_port: int = ports.COAP_PORT
    coaps_port: int = ports.COAPS_PORT
    tls_cert: Path | None = None  # None: the data dir's development certificate
    tls_key: Path | None = None
    broker_metrics_port: int = ports.BROKER_METRICS_PORT  # the sidecar serves its /metrics on http_port
    coap_metrics_port: int = ports.COAP_METRICS_PORT
    # Every component's per-address limits on failed logins (MQTT, HTTP and CoAP unknown tokens, admins)
    max_failed_logins: int = DEFAULT_MAX_FAILURES
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    log_format: str = "text"
    log_level: str = "INFO"
    telemetry_retention_days: float = TELEMETRY_RETENTION_DAYS
    audit_retention_days: float = AUDIT_RETENTION_DAYS
    telemetry_history: bool = True


@dataclass(frozen=True)
class Component:
    name: str
    argv: Sequence[str]
    listens_on: str  # shown to the operator
    environment: Mapping[str, str] = field(default_factory=dict)  # beside the supervisor's own


def gatehouse_command(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "gatehouse", *DataDir.of(settings.data_dir).command_options(), *args]


def components(settings: Settings) -> list[Component]:
    """The components `gatehouse up` runs."""
    tls = ["--tls-cert", str(settings.tls_cert), "--tls-key", str(settings.tls_key)] if settings.tls_cert else []
    logs = ["--log-format", settings.log_format, "--log-level", settings.log_level]
    limits = ["--max-failed-logins", str(settings.max_failed_logins), "--block-seconds", str(settings.block_seconds)]
    history = [] if settings.telemetry_history else ["--no-telemetry-history"]
    environment = DataDir.of(settings.data_dir).environment()
    return [
        Component("broker", gatehouse_command(settings, "broker", "--host", settings.host,
                                              "--mqtt-port", str(settings.mqtt_port),
                                              "--mqtts-port", str(settings.mqtts_port), *tls,
                                              "--metrics-port", str(settings.broker_metrics_port),
                                              "--telemetry-retention-days", f"{settings.telemetry_retention_days:g}",
                                              "--audit-retention-days", f"{settings.audit_retention_days:g}",
                                              *limits, *history, *logs),
                  f"MQTT on {settings.host}:{settings.mqtt_port}, MQTT over TLS on {settings.host}:{settings.mqtts_port}, "
                  f"metrics on http://{settings.host}:{settings.broker_metrics_port}/metrics", environment),
        Component("sidecar", gatehouse_command(settings, "sidecar", "--host", settings.host,
                                               "--http-port", str(settings.http_port),
                                               "--broker-host", _loopback_of(settings.host),
                                               "--broker-port", str(settings.mqtt_port), *limits, *history,
                                               *logs),
                  f"HTTP device API and admin REST API on http://{settings.host}:{settings.http_port}, "
                  f"metrics on http://{settings.host}:{settings.http_port}/metrics", environment),
        Component("coap", gatehouse_command(settings, "coap", "--host", settings.host,
                                            "--coap-port", str(settings.coap_port),
                                            "--coaps-port", str(settings.coaps_port),
                                            "--sidecar-url", _sidecar_url(settings), *tls,
                                            "--metrics-port", str(settings.coap_metrics_port), *limits, *logs),
                  f"CoAP device API on coap://{settings.host}:{settings.coap_port}, "
                  f"CoAP over DTLS on coaps://{settings.host}:{settings.coaps_port}, "
                  f"metrics on http://{settings.host}:{settings.coap_metrics_port}/metrics", environment),
    ]


def _loopback_of(host: str) -> str:
    """Where the sidecar reaches a broker listening on `host`."""
    return ports.LOOPBACK if host in ("0.0.0.0", "", "::") else host


def first_steps(settings: Settings, *, has_admins: bool) -> list[str]:
    """What `gatehouse up` tells a new user once everything runs: where to look, what to do first."""
    ui = f"http://{_loopback_of(settings.host)}:{settings.http_port}/ui/"
    lines = [f"web UI: {ui} (admin REST API under /api, OpenAPI at /api/openapi.json)"]
    data_dir = DataDir.of(settings.data_dir)
    options = " ".join(data_dir.command_options())
    if data_dir.database_url:
        lines.append(f"database: {data_dir.database_shown} (the commands below need the same URL, "
                     "e.g. in GATEHOUSE_DATABASE_URL)")
    if not has_admins:
        lines.append(f"no administrator yet: create the first with `gatehouse {options} "
                     "admin add you@example.com` (it asks for a password), then log in to the web UI")
    lines.append(f"devices: `gatehouse {options} device create NAME --token TOKEN`, then MQTT "
                 f"with the token as user name on {settings.host}:{settings.mqtt_port}, or HTTP "
                 f"POST {ui.removesuffix('/ui/')}/api/v1/TOKEN/telemetry")
    return lines


def _sidecar_url(settings: Settings) -> str:
    """Where the CoAP bridge reaches the sidecar's HTTP device API."""
    return ports.http_url(_loopback_of(settings.host), settings.http_port)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def supervise(parts: Sequence[Component], *, say: Callable[[str], None] = print,
              grace_seconds: float = STOP_GRACE_SECONDS, then: Sequence[str] = (),
              restart_on_failure: bool = False) -> int:
    """Run `parts` until SIGINT/SIGTERM (exit status 0) or until one of them stops (1); `then`
    is said once they have all said they are ready. With `restart_on_failure`, a component that
    fails (a nonzero status or a signal) is started again after a back-off (Restarts) and the
    others keep running; one that exits cleanly still stops them all, as systemd's on-failure
    leaves a clean exit alone."""
    stop_requested = []

    def request_stop(signum, _frame):
        stop_requested.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    running: dict[str, subprocess.Popen] = {}
    restarts = Restarts()
    by_name = {part.name: part for part in parts}
    sockets_dir = tempfile.mkdtemp(prefix="gatehouse-up-")
    readiness = {part.name: ReadinessSocket(os.path.join(sockets_dir, f"{index}.notify"))
                 for index, part in enumerate(parts)}
    waiting_for = set(by_name)  # not yet ready since it was last started
    said_then = False
    status = 0

    def start(part: Component) -> None:
        # Own process group: a terminal Ctrl-C reaches only the supervisor, which then
        # stops the children in order instead of all of them racing to exit.
        readiness[part.name].said_ready()  # drop what an earlier run said before it died
        env = {**os.environ, **part.environment, NOTIFY_SOCKET: readiness[part.name].path}
        running[part.name] = subprocess.Popen(part.argv, start_new_session=True, env=env)
        restarts.started(part.name)
        waiting_for.add(part.name)
        say(f"{part.name}: {part.listens_on} (pid {running[part.name].pid})")

    try:
        for part in parts:
            start(part)
        while not stop_requested:
            for name in [name for name in waiting_for if name in running and readiness[name].said_ready()]:
                waiting_for.discard(name)
                if said_then:
                    say(f"{name} is ready again")
            if not said_then and not waiting_for:
                said_then = True
                for line in then:
                    say(line)
            failed = next(((name, p.returncode) for name, p in running.items() if p.poll() is not None), None)
            if failed is not None:
                name, code = failed
                del running[name]
                if not restart_on_failure or code == 0:
                    say(f"{name} {_describe_exit(code)}; stopping the other components")
                    status = 1
                    break
                delay = restarts.stopped(name)
                say(f"{name} {_describe_exit(code)}; starting it again in {delay:g} s")
            for name in restarts.due():
                start(by_name[name])
            time.sleep(POLL_SECONDS)
        else:
            say(f"received {signal.Signals(stop_requested[0]).name}; stopping")
    finally:
        _stop_all(running, say, grace_seconds)
        for s, handler in previous.items():
            signal.signal(s, handler)
        for sock in readiness.values():
            sock.close()
        os.rmdir(sockets_dir)
    return status


class Restarts:
    """When to start a stopped component again: after 1 s, doubling up to 30 s while it keeps
    stopping, and from 1 s again once it has run STABLE_SECONDS."""

    FIRST_DELAY, MAX_DELAY, STABLE_SECONDS = 1.0, 30.0, 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._started: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self._due: dict[str, float] = {}

    def started(self, name: str) -> None:
        self._started[name] = self._clock()
        self._due.pop(name, None)

    def stopped(self, name: str) -> float:
        """The delay before `name`, which just stopped, is started again."""
        ran = self._clock() - self._started.get(name, self._clock())
        delay = self.FIRST_DELAY if ran >= self.STABLE_SECONDS or name not in self._delay \
            else min(self.MAX_DELAY, 2 * self._delay[name])
        self._delay[name] = delay
        self._due[name] = self._clock() + delay
        return delay

    def due(self) -> list[str]:
        now = self._clock()
        return [name for name, at in self._due.items() if at <= now]


def _stop_all(running: dict[str, subprocess.Popen], say: Callable[[str], None], grace_seconds: float) -> None:
    for process in running.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for name, process in running.items():
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop within {grace_seconds:g} s; killing it")
            process.kill()
            process.wait()
