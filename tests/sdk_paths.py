"""Where ThingsBoard's client software lives for the tests: the SDK's virtual environment
(.venv-sdk, built by `make test`: tb-mqtt-client, tb-rest-client, CoAPthon3) and the scripts in
tests/sdk_scripts that run under its Python."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_PYTHON = REPO_ROOT / ".venv-sdk" / "bin" / "python"
SCRIPTS = Path(__file__).resolve().parent / "sdk_scripts"
