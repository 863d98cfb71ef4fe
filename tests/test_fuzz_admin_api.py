"""Schemathesis against the admin REST API of a real `gatehouse sidecar`, from the OpenAPI document
it serves at /api/openapi.json, logged in as an administrator: requests generated from the
document (valid ones and ones that break it) get no 5xx, and every answer matches the document
(status code, content type, body schema, headers).

GATEHOUSE_FUZZ_SCALE multiplies the examples per operation.
"""
from __future__ import annotations

import pytest
import requests
from hypothesis import given
from schemathesis import GenerationMode, openapi
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from gatehouse.registry import Registry
from sidecar.openapi import document

from .conftest import NO_BLOCKING, broker_and_sidecar
from .fuzz_budget import fuzz_settings

ADMIN, ADMIN_PASSWORD = "fuzz-admin", "fuzz-admin-password"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    # Generated requests log in wrongly on purpose: address blocking is pushed out of the way.
    root = tmp_path_factory.mktemp("fuzz-admin-api")
    with broker_and_sidecar(root, *NO_BLOCKING, sidecar_options=NO_BLOCKING) as (broker, sidecar):
        with Registry.open(broker.data_dir) as registry:
            registry.add_admin(ADMIN, ADMIN_PASSWORD)
        yield sidecar


@pytest.fixture(scope="module")
def admin_headers(sidecar) -> dict[str, str]:
    answer = requests.post(f"{sidecar.url}/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD},
                           timeout=10)
    assert answer.status_code == 200, answer.text
    return {"X-Authorization": f"Bearer {answer.json()['token']}"}


@pytest.fixture(scope="module")
def served_document(sidecar):
    return openapi.from_url(f"{sidecar.url}/api/openapi.json")


def _operations() -> list[tuple[str, GenerationMode]]:
    """Every documented operation with valid requests, and with invalid ones where it takes
    parameters or a body to break. Taken from the code that builds the document, for one
    readable test per operation; the requests come from the document the sidecar serves."""
    operations = []
    for path, methods in document()["paths"].items():
        for method, operation in methods.items():
            label = f"{method.upper()} {path}"
            operations.append((label, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                operations.append((label, GenerationMode.NEGATIVE))
    return operations


@pytest.mark.parametrize(("operation", "generation_mode"), _operations(),
                         ids=lambda value: getattr(value, "value", value))
def test_admin_api_answers_generated_requests_as_documented_and_without_server_errors(
        served_document, sidecar, admin_headers, operation, generation_mode):
    strategy = served_document.find_operation_by_label(operation).as_strategy(generation_mode)

    @fuzz_settings(10)
    @given(case=strategy)
    def call(case):
        # A request the document allows may still be refused with ThingsBoard's 400 for what a
        # schema cannot say (a name already taken, an MQTT credentials body that does not
        # parse), so valid requests are not required to succeed.
        excluded = [positive_data_acceptance]
        if operation == "GET /api/tenant/devices" and "deviceName" in (case.query or {}):
            # ThingsBoard's getTenantDevice: with deviceName the paging parameters are not read,
            # so bad ones are not refused either.
            excluded.append(negative_data_rejection)
        case.call_and_validate(base_url=sidecar.url, headers=admin_headers, timeout=30, excluded_checks=excluded)

    call()
