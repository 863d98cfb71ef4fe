"""A process's Prometheus `/metrics` endpoint (the broker's and the CoAP bridge's; the sidecar
serves its own on its HTTP port). The metrics themselves, their names and labels, are domain
vocabulary and stay in gatehouse.metrics; serving them is part of running a process, so it is
here (see gatehouse.runtime)."""
from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(host: str, port: int):
    """Serve the default registry on http://host:port/metrics from a daemon thread (prometheus_client's
    own server); returns (server, bound port). Raises OSError if the port is busy. Stop it with
    `server.shutdown(); server.server_close()`."""
    server, _thread = start_http_server(port, addr=host)
    return server, server.server_port
