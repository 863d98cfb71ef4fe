"""Every default port of the product, in one place: the components' settings, the launcher's
options (`gatehouse broker`, `sidecar`, `coap`, `up`) and `gatehouse up`'s supervisor all refer to
these, so that a default changes here and nowhere else."""
from __future__ import annotations

MQTT_PORT = 1883  # the broker's plain MQTT listener (the MQTT standard's port)
MQTTS_PORT = 8883  # the broker's MQTT over TLS listener
HTTP_PORT = 8080  # the sidecar: HTTP device API, admin REST API, web UI and its /metrics (ThingsBoard's)
COAP_PORT = 5683  # the CoAP bridge's plain CoAP listener (UDP)
COAPS_PORT = 5684  # the CoAP bridge's CoAP over DTLS listener (UDP)
BROKER_METRICS_PORT = 9883  # the broker's Prometheus /metrics
COAP_METRICS_PORT = 9884  # the CoAP bridge's Prometheus /metrics

LOOPBACK = "127.0.0.1"


def http_url(host: str, port: int) -> str:
    """http://host:port, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


SIDECAR_URL = http_url(LOOPBACK, HTTP_PORT)  # where the CoAP bridge reaches the sidecar by default
