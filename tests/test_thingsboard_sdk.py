"""ThingsBoard's own Python SDK (tb-mqtt-client, unchanged) against the Gatehouse broker.

The SDK ships a fork of paho under paho-mqtt's module name, so it lives in a virtual environment
of its own (.venv-sdk, built by `make test`) and runs here as a subprocess: each script in
tests/sdk_scripts takes its parameters as JSON on the command line and prints its result as
JSON. Only provisioning is exercised for now: `TBDeviceMqttClient.provision` speaks MQTT 3.1.1
with the user name `provision`; the SDK's device client speaks MQTT 5, which the broker refuses.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gatehouse.models import CredentialsType, ProvisionType
from gatehouse.registry import Registry

from .mqtt_client import connect

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_PYTHON = REPO_ROOT / ".venv-sdk" / "bin" / "python"
SCRIPTS = Path(__file__).resolve().parent / "sdk_scripts"
# The SDK's provisioning client waits up to 60 s for an answer before it gives up.
SDK_TIMEOUT = 90

KEY, SECRET = "sdkProvisionKey", "sdk-Secret-5c1e7a"


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON.relative_to(REPO_ROOT)} is missing: `make test` builds it "
                    "(ThingsBoard's SDK, tb-mqtt-client, in a virtual environment of its own)", pytrace=False)
    return SDK_PYTHON


@dataclass_free := None  # noqa: E731 (placeholder removed below)
