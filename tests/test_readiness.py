"""systemd's notify protocol, both ends: a component says READY=1 to NOTIFY_SOCKET, if it is set."""
import socket

from gatehouse.runtime.readiness import ReadinessSocket, notify_ready


def test_without_a_notify_socket_nothing_is_said(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_ready() is False


def test_ready_reaches_the_supervisors_socket_once(tmp_path, monkeypatch):
    sock = ReadinessSocket(str(tmp_path / "x.notify"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.path)
        assert sock.said_ready() is False
        assert notify_ready() is True
        assert sock.said_ready() is True
        assert sock.said_ready() is False
    finally:
        sock.close()
    assert not (tmp_path / "x.notify").exists()


def test_an_abstract_socket_name_as_systemd_may_give_it(monkeypatch):
    name = f"gatehouse-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify_ready() is True
        assert sock.recv(100) == b"READY=1"


def test_a_supervisor_that_has_gone_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.notify"))
    assert notify_ready() is False
