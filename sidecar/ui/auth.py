"""Logging in and out of the web UI, and the guard in front of every page: a logged-in
administrator (the admin REST API's users, Registry.verify_admin) and, for every POST, a valid
CSRF token. Errors inside the UI are HTML pages, not the APIs' JSON."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Response, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from gatehouse.errors import SERVER_UNAVAILABLE_ERRORS, NotFoundError

from ..admin_auth import (
    TOO_MANY_FAILED_LOGINS,
    AdminLogin,
    check_login,
    retry_after_seconds,
)
from .blueprint import csrf, registry, ui
from .forms import LoginForm

log = logging.getLogger(__name__)
SESSION_USER = "admin"
PUBLIC_ENDPOINTS = {"ui.login", "ui.static"}


@ui.before_request
def guard() -> Response | None:
    if request.endpoint not in PUBLIC_ENDPOINTS:
        username = session.get(SESSION_USER)
        # An administrator removed meanwhile is logged out with the next request.
        if not isinstance(username, str) or not registry().admin_exists(username):
            session.clear()
            back = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("ui.login", next=back))
        g.admin = username
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()  # the login form too: no logging a victim's browser into an attacker's account
    return None


@ui.after_request
def protective_headers(response: Response) -> Response:
    """No framing (clickjacking), scripts and styles from the UI's own files only, and no page
    kept in caches: a revealed secret must not outlive its page."""
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    """Only a path inside the UI: never an open redirect to another site."""
    parts = urlsplit(target or "")
    if target and not parts.scheme and not parts.netloc and parts.path.startswith("/ui/"):
        return target
    return url_for("ui.devices")


@ui.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        username, password = form.username.data or "", form.password.data or ""
        outcome = check_login(username, password)
        if outcome is AdminLogin.ACCEPTED:
            session.clear()  # a fresh session (and CSRF token) for the new login
            session.permanent = True
            session[SESSION_USER] = username
            return redirect(_safe_next(request.args.get("next")))
        if outcome is AdminLogin.BLOCKED:
            form.password.errors.append(f"{TOO_MANY_FAILED_LOGINS} (in {retry_after_seconds()} s)")
            return render_template("ui/login.html", form=form), 429
        form.password.errors.append("Invalid username or password")
    return render_template("ui/login.html", form=form)


@ui.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("ui.login"))


@ui.route("/")
def home():
    return redirect(url_for("ui.devices"))


def error_page(status: int, message: str) -> tuple[str, int]:
    return render_template("ui/error.html", status=status, message=message), status


@ui.errorhandler(CSRFError)
def csrf_refused(error: CSRFError):
    return error_page(400, f"The form could not be accepted ({error.description}). Reload the page and try again.")


@ui.errorhandler(NotFoundError)
def not_found(error: NotFoundError):
    return error_page(404, str(error))


@ui.errorhandler(HTTPException)
def http_error(error: HTTPException):
    return error_page(error.code or 500, error.description or error.name)


def database_unavailable(error: Exception):
    log.warning("web UI request answered 503: %s", error)
    return error_page(503, "The database is unavailable right now; try again in a moment.")


# The UI's own: its handler of Exception below would otherwise win over the app's 503 (sidecar.app).
for _unavailable in SERVER_UNAVAILABLE_ERRORS:
    ui.register_error_handler(_unavailable, database_unavailable)


@ui.errorhandler(Exception)
def internal_error(error: Exception):
    log.exception("web UI request failed")
    return error_page(500, "Internal server error")
