"""The Prometheus metrics every Gatehouse process exports on its `/metrics` (names, help texts and
label sets in one place), and the small helpers the components share.

Each process (broker, sidecar, CoAP bridge) has its own copy of these objects in prometheus_client's
default registry and increments only what it serves; the `transport` label says where a figure
comes from ("MQTT", "HTTP", "COAP"). Label values are fixed vocabularies (enum values, route names),
never device names, addresses or anything a client chose.

Hot paths bind their label values once (`Counter.labels(...)` returns a child) and keep the child:
`child.inc()` is a lock and an addition.

Serving them over HTTP is running a process, not domain code: gatehouse.runtime.metrics_server.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from .login import (
    APPLICATION_USERNAME_PREFIX,
    SERVICE_USERNAME_PREFIX,
    LoginOutcome,
    LoginResult,
)
from .login_limiter import LoginLimiter

MQTT, HTTP, COAP = "MQTT", "HTTP", "COAP"
IN, OUT = "in", "out"
ACCEPTED = "ACCEPTED"
BLOCKED = "BLOCKED"  # refused before any lookup: the address is blocked
UNKNOWN = "UNKNOWN"  # a refused login's credentials matched nothing, so their type is unknown
NO_PROFILE = "NONE"  # a provisioning request whose key matched no profile
PROVISION_INVALID = "INVALID"  # a provisioning request that could not be processed at all

LOGINS = Counter(
    "gatehouse_logins", "Device, application and service logins (MQTT CONNECT, HTTP and CoAP requests that "
    "carry credentials), by credentials type and outcome (ACCEPTED or the refusal).",
    ["transport", "credentials_type", "outcome"])
PROVISIONING = Counter(
    "gatehouse_provisioning_requests", "Provisioning requests, by the matched profile's strategy (NONE: no "
    "profile has the key) and outcome (SUCCESS, NOT_FOUND, FAILURE, or INVALID for a request not processed).",
    ["transport", "strategy", "outcome"])
CONNECTED_DEVICES = Gauge(
    "gatehouse_connected_devices", "Devices connected now (MQTT: live device sessions; HTTP and CoAP: devices "
    "with a long poll or an observation open).", ["transport"])
MESSAGES = Counter(
    "gatehouse_messages", "Device messages: in, from devices, by kind (telemetry, attributes, rpc_request, ...); "
    "out, to devices (attributes_update, rpc_call, ...) and to applications (application).",
    ["transport", "direction", "kind"])
REQUEST_SECONDS = Histogram(
    "gatehouse_request_seconds", "Time to process a request: HTTP requests (by route), CoAP requests (by "
    "feature), MQTT PUBLISHes (by kind, until the answer is decided: stored for telemetry).",
    ["transport", "endpoint"],
    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
LONG_POLLS_REFUSED = Counter(
    "gatehouse_long_polls_refused", "Long polls (HTTP devices' update, RPC and client-side RPC waits; CoAP "
    "observations' polls) refused with 503 because every poll slot was taken: a quarter of the sidecar's threads "
    "stays for requests that return at once.", ["transport"])
BLOCKED_ADDRESSES = Gauge(
    "gatehouse_blocked_addresses", "Source addresses blocked now after repeated failed logins: devices' MQTT "
    "logins (broker), HTTP device requests with unknown tokens and administrators' logins to the admin API and web "
    "UI (sidecar), CoAP requests with unknown tokens (CoAP bridge).")


def login_credentials_type(result: LoginResult, username: str | None, has_certificate: bool) -> str:
    """The `credentials_type` label of a login: what it logged in as, or for a refusal, what it
    tried (application and service accounts, a client certificate) if that is known."""
    outcome = result.outcome
    if outcome is LoginOutcome.ACCEPTED:
        return result.credentials_type.value if result.credentials_type is not None else UNKNOWN
    if outcome is LoginOutcome.PROVISION_SESSION:
        return "PROVISION"
    if outcome is LoginOutcome.APPLICATION or (username or "").startswith(APPLICATION_USERNAME_PREFIX):
        return "APPLICATION"
    if outcome is LoginOutcome.SERVICE or (username or "").startswith(SERVICE_USERNAME_PREFIX):
        return "SERVICE"
    if has_certificate:
        return "X509_CERTIFICATE"
    return UNKNOWN


def login_outcome(result: LoginResult) -> str:
    """The `outcome` label: ACCEPTED for any admitted login, else the refusal."""
    if result.outcome in (LoginOutcome.ACCEPTED, LoginOutcome.PROVISION_SESSION, LoginOutcome.APPLICATION,
                          LoginOutcome.SERVICE):
        return ACCEPTED
    return result.outcome.value


def provision_strategy(result) -> str:
    """The `strategy` label of a provisioning result (gatehouse.provisioning.ProvisionResult)."""
    return result.strategy.value if result.strategy is not None else NO_PROFILE


class Children:
    """Label-bound children of one metric, made once per label tuple and kept (thread-safe)."""

    def __init__(self, metric, *fixed: str):
        self._metric = metric
        self._fixed = fixed
        self._children: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def __call__(self, *labels: str):
        child = self._children.get(labels)
        if child is None:
            with self._lock:
                child = self._children.get(labels)
                if child is None:
                    child = self._children[labels] = self._metric.labels(*self._fixed, *labels)
        return child


def gauge_function(gauge: Gauge, fn: Callable[[], float], *labels: str) -> None:
    """`gauge` (or its child for `labels`) reads `fn()` when scraped: nothing to keep up to date."""
    (gauge.labels(*labels) if labels else gauge).set_function(fn)


def export_blocked_addresses(*limiters: LoginLimiter) -> None:
    """gatehouse_blocked_addresses reads `limiters` when scraped: the addresses any of them blocks,
    each once (the sidecar has two, for device tokens and for administrators). A process exports
    the limiters of its last call."""
    gauge_function(BLOCKED_ADDRESSES, lambda: len({a for limiter in limiters for a in limiter.blocked_addresses()}))

