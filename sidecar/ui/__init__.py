"""The operator web UI, `/ui`: device profiles, devices and their credentials, attributes and
bulk import, for the administrators of the admin REST API. Server-rendered pages (Jinja), a
little progressive JavaScript, Flask-WTF forms with CSRF tokens, and Flask's signed session
cookie keyed by a key derived from the server key.

Only this blueprint checks CSRF tokens: the device API and the admin REST API are called by
devices and scripts, which carry no cookies.
"""
from __future__ import annotations

from datetime import timedelta

from flask import Flask, Request, redirect, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from gatehouse.data_dir import DataDir
from gatehouse.server_key import ServerKey

from ..context import EXTENSION
from . import auth, bulk_import, devices, profiles  # noqa: F401  (they add their routes to the blueprint)
from .blueprint import UI_PATH, csrf, ui
from .import_jobs import ImportJobs


class UiSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, for the UI's requests only. Every other request (the
    device API's above all) gets Flask's null session instead of building a signing serializer
    to read a cookie the browser never sends outside `/ui`: about a tenth of a telemetry
    request's CPU in the app, 5 % more requests/s in bench/http.py."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path != UI_PATH and not request.path.startswith(UI_PATH + "/"):
            return None  # Flask then makes a null session, which it does not save
        return super().open_session(app, request)


def init_ui(app: Flask, data_dir, idle_seconds: int) -> None:
    app.session_interface = UiSessions()
    app.secret_key = ServerKey(DataDir.of(data_dir).server_key.read_bytes()).web_session_key()
    app.config.update(
        SESSION_COOKIE_NAME="gatehouse_ui",
        SESSION_COOKIE_PATH=UI_PATH,  # not sent with device or admin API calls
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Flask re-signs a permanent session on every request and refuses a cookie signed longer
        # ago than this: an idle lifetime, enforced by the server whatever the browser keeps.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=idle_seconds),
        SESSION_REFRESH_EACH_REQUEST=True,
        WTF_CSRF_CHECK_DEFAULT=False,  # the UI blueprint checks (auth.guard); the APIs take no cookies
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session
    )
    csrf.init_app(app)
    app.extensions[ImportJobs.EXTENSION] = ImportJobs(data_dir, app.extensions[EXTENSION].shared_attributes_written)
    app.register_blueprint(ui)
    # The sidecar's root has nothing of its own: someone opening http://HOST:8080/ wants the UI.
    app.add_url_rule("/", "root", lambda: redirect(url_for("ui.home")))
