"""The web UI's blueprint and CSRF protection, shared by its view modules."""
from __future__ import annotations

from flask import Blueprint
from flask_wtf.csrf import CSRFProtect

from gatehouse.registry import Registry

from ..context import sidecar

UI_PATH = "/ui"
ui = Blueprint("ui", __name__, url_prefix=UI_PATH, template_folder="templates", static_folder="static")
csrf = CSRFProtect()


def registry() -> Registry:
    """This server thread's registry."""
    return sidecar().registry
