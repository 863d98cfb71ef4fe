"""The HTTP device API, `/api/v1` (SPEC §4.1, §5)."""
from __future__ import annotations

from flask import Blueprint

device_api = Blueprint("device_api", __name__, url_prefix="/api/v1")
