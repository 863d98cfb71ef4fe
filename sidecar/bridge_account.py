"""The CoAP bridge's service account, as the sidecar checks it: what the bridge says about a
request (the client certificate it was given, that it came over CoAP) is believed only from a
request that carries the bridge's service credentials."""
from __future__ import annotations

import hmac

from flask import g, request

from .context import sidecar

BRIDGE_SERVICE_ACCOUNT = "coap"


def from_the_bridge() -> bool:
    """Whether this request carries the bridge's service credentials (checked once a request)."""
    verified = g.get("from_the_bridge")
    if verified is None:
        verified = g.from_the_bridge = _carries_bridge_credentials()
    return verified


def _carries_bridge_credentials() -> bool:
    authorization = request.authorization
    if authorization is None or authorization.type != "basic":
        return False
    # The service username holds a colon ("gatehouse-service:coap"), so Basic's user:password
    # splits inside it; compare the whole user:password text instead of its two halves.
    supplied = f"{authorization.username}:{authorization.password}"
    username, password = sidecar().service_credentials(BRIDGE_SERVICE_ACCOUNT)
    return hmac.compare_digest(supplied.encode(), f"{username}:{password}".encode())
