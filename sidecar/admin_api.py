"""The admin REST API, `/api` (SPEC §8)."""
from __future__ import annotations

from flask import Blueprint

admin_api = Blueprint("admin_api", __name__, url_prefix="/api")
