"""`gatehouse up`'s supervisor, with real child processes: a component that dies stops the
rest, SIGTERM stops everything cleanly, and a child that ignores SIGTERM is killed."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from gatehouse.cli.supervisor import Component, Restarts, Settings, first_steps, supervise
from gatehouse.data_dir import DataDir

from .conftest import free_port
from .mqtt_client import connect as mqtt_connect

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
STUBBORN = [sys.executable, "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; it only waits to be reaped.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def _pids(lines):
    return [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in lines if "(pid " in line]


def test_a_component_that_dies_stops_the_others():
    said = []
    status = supervise([Component("steady", SLEEPER, "nowhere"),
                        Component("crasher", [sys.executable, "-c", "import sys; sys.exit(3)"], "nowhere")],
                       say=said.append)
    assert status == 1
    assert "crasher exited with status 3; stopping the other components" in said
    assert not any(_alive(pid) for pid in _pids(said))


def test_a_component_killed_by_a_signal_is_named_with_the_signal():
    said = []
    suicide = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert supervise([Component("victim", suicide, "nowhere")], say=said.append) == 1
    assert "victim killed by SIGKILL; stopping the other components" in said


def test_sigterm_stops_every_component_and_exits_cleanly(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from gatehouse.cli.supervisor import Component, supervise
        parts = [Component("one", {SLEEPER!r}, "port 1"), Component("two", {SLEEPER!r}, "port 2")]
        sys.exit(supervise(parts, say=lambda line: print(line, flush=True)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    assert lines[0].startswith("one: port 1 (pid ") and lines[1].startswith("two: port 2 (pid ")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "received SIGTERM; stopping" in rest
    assert not any(_alive(pid) for pid in _pids(lines))


def test_with_restart_on_failure_a_component_that_dies_is_started_again_and_the_others_keep_running(tmp_path):
    # "flaky" exits with status 3 twice, then stays up; "steady" must never be restarted.
    count = tmp_path / "starts"
    flaky = [sys.executable, "-c", f"import pathlib, sys, time; p = pathlib.Path({str(count)!r}); "
             "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
             "sys.exit(3) if n < 2 else time.sleep(120)"]
    script = textwrap.dedent(f"""
        import sys
        from gatehouse.cli.supervisor import Component, supervise
        parts = [Component("steady", {SLEEPER!r}, "port 1"), Component("flaky", {flaky!r}, "port 2")]
        sys.exit(supervise(parts, say=lambda line: print(line, flush=True), restart_on_failure=True))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        while sum(line.startswith("flaky: port 2 (pid ") for line in lines) < 3:
            line = proc.stdout.readline()
            assert line, "the supervisor ended:\n" + "".join(lines)
            lines.append(line)
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    said = [line.strip() for line in lines]
    assert said.count("flaky exited with status 3; starting it again in 1 s") == 1, said
    assert said.count("flaky exited with status 3; starting it again in 2 s") == 1, said
    assert sum(line.startswith("steady: ") for line in said) == 1
    assert proc.returncode == 0 and "received SIGTERM; stopping" in rest
    assert not any(_alive(pid) for pid in _pids(said))


def test_with_restart_on_failure_a_clean_exit_is_not_restarted_and_stops_the_others():
    said = []

    def say(line: str) -> None:
        said.append(line)
        assert "starting it again" not in line, said  # ends supervise() rather than restarting forever

    status = supervise([Component("steady", SLEEPER, "nowhere"),
                        Component("done", [sys.executable, "-c", "pass"], "nowhere")],
                       say=say, restart_on_failure=True)
    assert status == 1
    assert "done exited with status 0; stopping the other components" in said
    assert sum(line.startswith("done: ") for line in said) == 1
    assert not any(_alive(pid) for pid in _pids(said))


def _says_ready_after(seconds: float, marker) -> list[str]:
    """A component that opens "its listeners" after `seconds`, notes it in `marker`, says READY=1."""
    return [sys.executable, "-c", f"import pathlib, time; time.sleep({seconds}); "
            f"pathlib.Path({str(marker)!r}).write_text('ready'); "
            "from gatehouse.runtime.readiness import notify_ready; assert notify_ready(); time.sleep(120)"]


def test_what_to_do_next_is_said_only_once_every_component_said_it_is_ready(tmp_path):
    markers = [tmp_path / "fast", tmp_path / "slow"]
    said = []

    def say(line: str) -> None:
        if line == "next":  # every component must have opened its listeners by now
            said.append(("ready when said", [marker.exists() for marker in markers]))
            raise KeyboardInterrupt  # ends supervise(), which stops the components
        said.append(line)

    with pytest.raises(KeyboardInterrupt):
        supervise([Component("fast", _says_ready_after(0, markers[0]), "nowhere"),
                   Component("slow", _says_ready_after(1.5, markers[1]), "nowhere")], say=say, then=["next"])
    assert said[-1] == ("ready when said", [True, True]), said
    assert not any(_alive(pid) for pid in _pids(said[:-1]))


def test_what_to_do_next_is_never_said_while_a_component_has_not_said_it_is_ready(tmp_path):
    said = []
    silent_then_gone = [sys.executable, "-c", "import time; time.sleep(2)"]
    assert supervise([Component("ready", _says_ready_after(0, tmp_path / "m"), "nowhere"),
                      Component("silent", silent_then_gone, "nowhere")], say=said.append, then=["next"]) == 1
    assert (tmp_path / "m").exists() and "next" not in said, said


def test_restart_back_off_doubles_to_30_s_and_starts_over_after_a_stable_run():
    now = [0.0]
    restarts = Restarts(clock=lambda: now[0])
    delays = []
    for _ in range(7):
        restarts.started("broker")
        now[0] += 1
        delays.append(restarts.stopped("broker"))
        assert restarts.due() == []
        now[0] += delays[-1]
        assert restarts.due() == ["broker"]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    restarts.started("broker")
    now[0] += Restarts.STABLE_SECONDS
    assert restarts.stopped("broker") == 1


def test_a_component_ignoring_sigterm_is_killed_after_the_grace_period():
    said = []
    started = time.monotonic()
    status = supervise([Component("stubborn", STUBBORN, "nowhere"),
                        Component("crasher", [sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(1)"],
                                  "nowhere")],
                       say=said.append, grace_seconds=0.5)
    assert status == 1
    assert "stubborn did not stop within 0.5 s; killing it" in said
    assert time.monotonic() - started < 30
    assert not any(_alive(pid) for pid in _pids(said))


def test_up_runs_the_whole_system_and_stops_it_on_sigterm(tmp_path):
    data_dir = tmp_path / "d"
    # The sidecar is told the broker's port and the CoAP bridge the sidecar's, so those are chosen
    # here; the others are port 0.
    proc = subprocess.Popen([sys.executable, "-m", "gatehouse", "--data-dir", str(data_dir), "up", "--host", "127.0.0.1",
                             "--mqtt-port", str(free_port()), "--mqtts-port", "0", "--http-port", str(free_port()),
                             "--coap-port", "0", "--coaps-port", "0", "--broker-metrics-port", "0",
                             "--coap-metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        ready = ("MQTTS listening on", "HTTP  listening on", "COAP  listening on")
        # Each process prints its own lines: the sidecar may log its broker link before it prints where it listens.
        while not (any(line.startswith("devices: ") for line in lines)  # the last of what to do next
                   and any("connected to the broker" in line for line in lines)):
            line = proc.stdout.readline()
            assert line, "gatehouse up ended early:\n" + "".join(lines)
            lines.append(line)
        # What to do next comes once everything listens, not lost among the components' start-up lines.
        web_ui = next(i for i, line in enumerate(lines) if line.startswith("web UI: "))
        assert all(any(line.startswith(start) for line in lines[:web_ui]) for start in ready), lines
        assert (data_dir / "gatehouse.db").exists() and (data_dir / "pki" / "ca.pem").exists()
        assert any(line.startswith("broker: ") for line in lines) and any(line.startswith("sidecar: ") for line in lines)
        http_port = next(int(line.rsplit(":", 1)[1]) for line in lines if line.startswith("HTTP  listening on"))
        with pytest.raises(urllib.error.HTTPError) as refused:  # the device API answers: an unknown token
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/no-such-token/attributes", timeout=10)
        refused.value.close()
        assert refused.value.code == 401
        # A new user is told where the data is and what to do first.
        assert f"web UI: http://127.0.0.1:{http_port}/ui/ (admin REST API under /api, OpenAPI at /api/openapi.json)\n" \
            in lines, lines
        assert any(line.startswith("no administrator yet: create the first with `gatehouse --data-dir ")
                   and "admin add you@example.com`" in line for line in lines)
        coap_port = next(int(line.rsplit(":", 1)[1]) for line in lines if line.startswith("COAP  listening on"))
        assert any(line.startswith("coap: ") for line in lines)
        assert _coap_code(f"coap://127.0.0.1:{coap_port}/api/v1/no-such-token/telemetry") == "4.01 Unauthorized"
    finally:
        proc.send_signal(signal.SIGTERM)  # the supervisor stops its children
        rest, _ = proc.communicate(timeout=30)
        print("".join(lines) + rest)  # shown if the test fails
    assert proc.returncode == 0, rest
    assert "received SIGTERM; stopping" in rest
    assert not any(_alive(pid) for pid in _pids([line.strip() for line in lines]))


def test_up_with_restart_on_failure_brings_a_killed_broker_back_and_keeps_the_others(tmp_path):
    mqtt_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gatehouse", "--data-dir", str(tmp_path / "d"), "up",
                             "--restart", "on-failure", "--host", "127.0.0.1", "--mqtt-port", str(mqtt_port),
                             "--mqtts-port", "0", "--http-port", str(free_port()), "--coap-port", "0",
                             "--coaps-port", "0", "--broker-metrics-port", "0", "--coap-metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []

    def read_until(done) -> None:
        while not done():
            line = proc.stdout.readline()
            assert line, "gatehouse up ended early:\n" + "".join(lines)
            lines.append(line)

    try:
        read_until(lambda: sum(line.startswith("MQTT  listening on") for line in lines) == 1
                   and any(line.startswith("coap: ") for line in lines))
        started = [line.strip() for line in lines if "(pid " in line]
        first = {line.split(":", 1)[0]: pid for line, pid in zip(started, _pids(started), strict=True)}
        os.kill(first["broker"], signal.SIGKILL)
        read_until(lambda: sum(line.startswith("MQTT  listening on") for line in lines) == 2)
        assert "broker killed by SIGKILL; starting it again in 1 s\n" in lines
        refused = mqtt_connect(mqtt_port, "after-restart", "no-such-token")  # the broker answers again
        assert refused.return_code == 5
        refused.close()
        assert sum(line.startswith("sidecar: ") for line in lines) == 1 and _alive(first["sidecar"])
        assert sum(line.startswith("coap: ") for line in lines) == 1 and _alive(first["coap"])
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        print("".join(lines) + rest)
    assert proc.returncode == 0
    assert not any(_alive(pid) for pid in _pids([line.strip() for line in lines]))


def _coap_code(uri: str) -> str:
    """The code of one CoAP POST (aiocoap's client), e.g. "4.01 Unauthorized"."""
    import asyncio

    import aiocoap

    async def post():
        context = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            request = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=b'{"t": 1}')
            return await asyncio.wait_for(context.request(request).response, 20)
        finally:
            await context.shutdown()

    return str(asyncio.run(post()).code)


def test_up_says_nothing_of_a_first_administrator_once_there_is_one(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", host="0.0.0.0", http_port=8080)
    assert first_steps(settings, has_admins=True)[0].startswith("web UI: http://127.0.0.1:8080/ui/ ")
    assert not any("administrator" in line for line in first_steps(settings, has_admins=True))
    assert any("admin add" in line for line in first_steps(settings, has_admins=False))


def test_up_passes_the_operators_certificate_to_the_broker(tmp_path):
    from gatehouse.cli.supervisor import Settings, components

    settings = Settings(data_dir=tmp_path, tls_cert=tmp_path / "own.pem", tls_key=tmp_path / "own.key")
    broker = components(settings)[0]
    argv = list(broker.argv)
    assert argv[argv.index("--tls-cert") + 1] == str(tmp_path / "own.pem")
    assert argv[argv.index("--tls-key") + 1] == str(tmp_path / "own.key")
    assert "--tls-cert" not in components(Settings(data_dir=tmp_path))[0].argv


def test_up_passes_metrics_ports_and_log_format_on_and_lists_the_metrics(tmp_path):
    from gatehouse.cli.supervisor import Settings, components

    settings = Settings(data_dir=tmp_path, host="127.0.0.1", broker_metrics_port=19883, coap_metrics_port=19884,
                        log_format="json")
    parts = {part.name: part for part in components(settings)}
    for name, port in (("broker", "19883"), ("coap", "19884")):
        argv = list(parts[name].argv)
        assert argv[argv.index("--metrics-port") + 1] == port
        assert f"metrics on http://127.0.0.1:{port}/metrics" in parts[name].listens_on
    assert "--metrics-port" not in parts["sidecar"].argv  # the sidecar serves /metrics on its HTTP port
    assert "metrics on http://127.0.0.1:8080/metrics" in parts["sidecar"].listens_on
    for part in parts.values():
        argv = list(part.argv)
        assert argv[argv.index("--log-format") + 1] == "json"


def test_up_passes_the_retention_settings_to_the_broker(tmp_path):
    from gatehouse.cli.supervisor import Settings, components

    parts = {part.name: part for part in components(Settings(data_dir=tmp_path, telemetry_retention_days=7,
                                                                 audit_retention_days=0))}
    argv = list(parts["broker"].argv)
    assert argv[argv.index("--telemetry-retention-days") + 1] == "7"
    assert argv[argv.index("--audit-retention-days") + 1] == "0"


def test_up_passes_no_telemetry_history_to_the_broker_and_the_sidecar(tmp_path):
    from gatehouse.cli.supervisor import Settings, components

    parts = {part.name: part for part in components(Settings(data_dir=tmp_path, telemetry_history=False))}
    assert "--no-telemetry-history" in parts["broker"].argv and "--no-telemetry-history" in parts["sidecar"].argv
    parts = {part.name: part for part in components(Settings(data_dir=tmp_path))}
    assert not any("--no-telemetry-history" in part.argv for part in parts.values())


def test_up_passes_the_database_url_in_the_environment_never_on_a_command_line(tmp_path):
    from gatehouse.cli.supervisor import Settings, components

    url = "postgresql://gatehouse:hunter2@db.example:5432/fleet"
    settings = Settings(data_dir=DataDir(tmp_path, url, tmp_path / "shared.key"))
    for component in components(settings):
        assert component.environment == {"GATEHOUSE_DATABASE_URL": url}
        assert not any("hunter2" in arg for arg in component.argv)
        argv = list(component.argv)
        assert argv[argv.index("--server-key-file") + 1] == str(tmp_path / "shared.key")
    assert not any("hunter2" in line for line in first_steps(settings, has_admins=False))
