"""Hostile input for the fuzz tests, as hypothesis strategies: payloads worth throwing at a parser,
and provisioning requests drawing on two profiles set up for them; with the tables such input may
change and what a provisioning request may add to each."""
from __future__ import annotations

import json

from hypothesis import strategies as st

from gatehouse.models import CredentialsType, ProvisionType
from gatehouse.registry import Registry

from .devices import stored_row_counts, unique

TABLES = ("device", "device_credentials", "attribute", "telemetry_latest", "telemetry_history",
          "provisioning_event")


def row_counts(registry: Registry) -> dict[str, int]:
    return stored_row_counts(registry.store.conn, TABLES)


# --- payloads -------------------------------------------------------------------------------------

any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=16,
)


def as_json(value) -> bytes:
    """JSON as a device's stdlib encoder writes it (NaN and Infinity included)."""
    return json.dumps(value).encode()


# Payloads worth throwing at a parser: random bytes, any JSON (NaN, huge numbers and all), JSON
# cut short, and the lenient forms ThingsBoard's Gson takes.
hostile_payloads = st.one_of(
    st.binary(max_size=200),
    any_json.map(as_json),
    st.tuples(any_json.map(as_json), st.integers(0, 200)).map(lambda pair: pair[0][:pair[1]]),
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                    st.integers() | st.text(max_size=8).map(json.dumps), max_size=4).map(
        lambda obj: ("{" + ",".join(f"{k}:{v}" for k, v in obj.items()) + "}").encode()),
    st.text(max_size=100).map(str.encode),
)


# --- provisioning ---------------------------------------------------------------------------------

ALLOW_KEY, ALLOW_SECRET = "fuzz-allow-key", "fuzz-allow-secret"
CHECK_KEY, CHECK_SECRET = "fuzz-check-key", "fuzz-check-secret"


def add_provisioning_profiles(registry: Registry) -> None:
    """Two profiles, one of them with a pre-provisioned device: names and keys the requests draw on."""
    registry.create_profile("fuzz-allow", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=ALLOW_KEY, secret=ALLOW_SECRET)
    registry.create_profile("fuzz-check", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key=CHECK_KEY,
                            secret=CHECK_SECRET)
    registry.create_device("fuzz-pre-provisioned", profile="fuzz-check")


junk_fields = st.text(max_size=30) | st.integers() | st.booleans() | st.none()
# ThingsBoard reads fields as strings: a list or an object makes the request unprocessable.
junk_structures = st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)


def _field(*meaningful):
    """Half the time a value that means something to the profiles above, half the time junk."""
    return st.one_of(st.sampled_from(meaningful), junk_fields)


_request_fields = {
    "deviceName": st.one_of(st.builds(unique, st.just("fuzz")),
                            _field("fuzz-pre-provisioned", "  ", " padded ", "x" * 256, "nul\x00name")),
    "credentialsType": st.sampled_from([t.value for t in CredentialsType]),
    "token": st.one_of(st.builds(unique, st.just("TOKEN")), _field("", "tok with space")),
    "clientId": _field("", "client"),
    "username": _field("", "user"),
    "password": _field("", "secret"),
    "hash": _field("", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----"),
    "gateway": _field(True, "true"),
}
# Requests with a profile's own key and secret (where the strategies decide), requests with any
# fields at all, and JSON that is no request.
provision_requests = st.one_of(
    st.tuples(st.sampled_from([(ALLOW_KEY, ALLOW_SECRET), (CHECK_KEY, CHECK_SECRET)]),
              st.fixed_dictionaries({}, optional=_request_fields)).map(
        lambda pair: {"provisionDeviceKey": pair[0][0], "provisionDeviceSecret": pair[0][1], **pair[1]}),
    st.fixed_dictionaries({}, optional={"provisionDeviceKey": _field(ALLOW_KEY, CHECK_KEY, "") | junk_structures,
                                        "provisionDeviceSecret": _field(ALLOW_SECRET, CHECK_SECRET, ""),
                                        **_request_fields,
                                        "credentialsType": _field("LWM2M_CREDENTIALS", "access_token", ""),
                                        "clientId": junk_structures}),
    any_json,
)


def provisioning_changes(answer: dict | None) -> dict[str, int]:
    """Rows a provisioning request adds to each table, by its answer (None: not processed): a
    SUCCESS adds a device with its credentials (none for the pre-provisioned device) and its
    provisionState; every processed request adds its audit event; nothing else changes."""
    succeeded = answer is not None and answer["status"] == "SUCCESS"
    created = int(succeeded and answer["deviceName"] != "fuzz-pre-provisioned")
    return {"device": created, "device_credentials": created, "attribute": int(succeeded),
            "telemetry_latest": 0, "telemetry_history": 0, "provisioning_event": int(answer is not None)}
