"""Administrator logins: the password check both the admin REST API and the web UI use, with
per-address blocking after repeated failures; ThingsBoard-shaped JWT pairs and the guard in
front of every admin route.

Tokens are HS256 JWTs signed with a key derived from the data dir's server key, with the claims
ThingsBoard puts in its own (`sub`, `scopes`, `userId`, `tenantId`, `iss`, `iat`, `exp`, ...), so
clients that decode them (tb-rest-client reads `exp` to schedule its refresh) keep working. Like
ThingsBoard's, an access token carries the scope TENANT_ADMIN and a refresh token only
REFRESH_TOKEN, so neither passes for the other. Failures are 401 with ThingsBoard's error codes:
10 (authentication) and 11 (JWT_TOKEN_EXPIRED). Tokens are never logged.
"""
from __future__ import annotations

import enum
import math
import time
import uuid
from collections.abc import Callable, Mapping

import jwt
from flask import Response, current_app, g, request

from gatehouse import metrics as gm

from . import metrics
from .context import sidecar
from .errors import error_response

ALGORITHM = "HS256"
ISSUER = "gatehouse"
TENANT_ADMIN = "TENANT_ADMIN"
REFRESH_TOKEN = "REFRESH_TOKEN"
# Gatehouse has one tenant and no customers; ThingsBoard's ids for them in tokens and JSON.
TENANT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "gatehouse:tenant"))
NULL_UUID = "13814000-1dd2-11b2-8080-808080808080"  # ThingsBoard's "no customer"
AUTHENTICATION, JWT_TOKEN_EXPIRED = 10, 11  # ThingsboardErrorCode
ADMIN = "ADMIN"  # administrators' logins in the login metrics, beside devices' credentials types
TOO_MANY_FAILED_LOGINS = "Too many failed logins from this address; try again later"
_REQUIRED_CLAIMS = ["sub", "scopes", "iss", "iat", "exp"]


class AdminLogin(enum.Enum):
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"  # wrong username or password
    BLOCKED = "BLOCKED"  # the address failed too often lately: nothing was checked


def check_login(username: str, password: str) -> AdminLogin:
    """An administrator's username and password, from this request's address (sidecar's
    --max-failed-logins, --block-seconds). From a blocked address the password is not even
    checked, so guessing it there learns nothing."""
    limiter, address = sidecar().admin_logins, request.remote_addr or ""
    if limiter.is_blocked(address):
        metrics.login(ADMIN, gm.BLOCKED)
        return AdminLogin.BLOCKED
    if not sidecar().registry.verify_admin(username, password):
        limiter.failed(address)
        metrics.login(ADMIN, "BAD_USERNAME_OR_PASSWORD")
        return AdminLogin.REFUSED
    limiter.succeeded(address)
    metrics.login(ADMIN, gm.ACCEPTED)
    return AdminLogin.ACCEPTED


def retry_after_seconds() -> int:
    """Whole seconds until this request's address may log in again (at least 1)."""
    return max(1, math.ceil(sidecar().admin_logins.seconds_blocked(request.remote_addr or "")))


class TokenError(Exception):
    def __init__(self, message: str, error_code: int = AUTHENTICATION):
        super().__init__(message)
        self.message = message
        self.error_code = error_code


def user_id(username: str) -> str:
    """An administrator's stable user id (ThingsBoard's `userId` claim and User.id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gatehouse:admin:{username}"))


def issue_tokens(key: bytes, username: str, *, expiry_seconds: int, refresh_expiry_seconds: int,
                 now: int | None = None) -> dict:
    """ThingsBoard's JwtPair: {"token", "refreshToken"}."""
    now = int(time.time()) if now is None else now
    common = {"sub": username, "userId": user_id(username), "sessionId": str(uuid.uuid4()), "isPublic": False,
              "iss": ISSUER, "iat": now}
    access = {**common, "scopes": [TENANT_ADMIN], "enabled": True, "tenantId": TENANT_ID, "customerId": NULL_UUID,
              "exp": now + expiry_seconds}
    refresh = {**common, "scopes": [REFRESH_TOKEN], "jti": str(uuid.uuid4()), "exp": now + refresh_expiry_seconds}
    return {"token": jwt.encode(access, key, ALGORITHM), "refreshToken": jwt.encode(refresh, key, ALGORITHM)}


def verify(key: bytes, token: str, scope: str) -> dict:
    """The claims of a valid, unexpired token of `scope`; raises TokenError otherwise."""
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": _REQUIRED_CLAIMS})
    except jwt.ExpiredSignatureError:
        raise TokenError("Token has expired", JWT_TOKEN_EXPIRED) from None
    except jwt.InvalidTokenError:
        raise TokenError("Invalid JWT token") from None
    scopes = claims.get("scopes")
    if not isinstance(scopes, list) or scope not in scopes or not isinstance(claims.get("sub"), str):
        raise TokenError("Invalid JWT token")
    return claims


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """ThingsBoard's `X-Authorization: Bearer <JWT>`; `Authorization: Bearer <JWT>` too (tools
    speaking OpenAPI's bearer scheme). A Basic `Authorization` header is not a token."""
    for header in ("X-Authorization", "Authorization"):
        scheme, _, token = (headers.get(header) or "").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def signing_key() -> bytes:
    return sidecar().registry.key.jwt_signing_key()


def public(view: Callable) -> Callable:
    """Marks an admin route that needs no token (login, refresh, the OpenAPI document)."""
    view.public = True
    return view


def login_required() -> Response | None:
    """The admin blueprint's before_request: every route not marked `public` needs a valid
    access token; its claims are `g.admin`."""
    view = current_app.view_functions.get(request.endpoint)
    if request.method == "OPTIONS" or getattr(view, "public", False):
        return None
    token = bearer_token(request.headers)
    if token is None:
        return error_response(401, "Authentication failed", AUTHENTICATION)
    try:
        g.admin = verify(signing_key(), token, TENANT_ADMIN)
    except TokenError as e:
        return error_response(401, e.message, e.error_code)
    return None
