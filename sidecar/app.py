"""The sidecar's Flask app factory: the HTTP device API (`/api/v1`), the admin REST API (`/api`)
and the operator web UI (`/ui`), with the APIs' errors as JSON in ThingsBoard's shape (the UI's
as pages) and never a traceback in a response. A database that cannot be reached is a 503 with
Retry-After on every route (gatehouse.errors.is_server_unavailable)."""
from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from gatehouse.errors import SERVER_UNAVAILABLE_ERRORS
from gatehouse.logs import redact_token_path

from .admin_api import admin_api
from .broker_link import BrokerLink
from .context import EXTENSION, Sidecar, SidecarSettings
from .device_api import device_api
from .errors import error_response
from .mailboxes import DeviceMailboxes
from .metrics import instrument
from .ui import init_ui
from .writer import GroupCommitWriter

log = logging.getLogger(__name__)
# The answer while the database cannot be reached (gatehouse.errors.is_server_unavailable).
SERVER_UNAVAILABLE = "The database is unavailable; try again later"
SERVER_UNAVAILABLE_RETRY_AFTER = "5"  # seconds


def create_app(settings: SidecarSettings, *, mailboxes: DeviceMailboxes | None = None,
               link: BrokerLink | None = None, writer: GroupCommitWriter | None = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # ThingsBoard's key order, e.g. in provisioning responses
    app.extensions[EXTENSION] = Sidecar(settings, mailboxes or DeviceMailboxes(), link, writer)
    app.register_blueprint(device_api)
    app.register_blueprint(admin_api)
    init_ui(app, settings.data_dir, settings.ui_session_idle_seconds)
    instrument(app)  # /metrics, and every request timed

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        response = error_response(error.code or 500, error.description or error.name)
        if getattr(error, "valid_methods", None):  # 405 keeps its Allow header
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    def server_unavailable(error: Exception) -> Response:
        # Nothing of the request was stored: the device may send it again (the CoAP bridge
        # answers 5.03 for it).
        log.warning("%s %s answered 503: %s", request.method, redact_token_path(request.path), error)
        response = error_response(503, SERVER_UNAVAILABLE)
        response.headers["Retry-After"] = SERVER_UNAVAILABLE_RETRY_AFTER
        return response

    for unavailable in SERVER_UNAVAILABLE_ERRORS:
        app.register_error_handler(unavailable, server_unavailable)

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Response:
        log.exception("request failed")
        return error_response(500, "Internal server error")

    return app
