"""Error answers in ThingsBoard's JSON shape, for every blueprint."""
from __future__ import annotations

from flask import Response, jsonify

from gatehouse.clock import now_ms

# ThingsBoard's ThingsboardErrorCode values, by HTTP status.
ERROR_CODES = {400: 31, 401: 10, 403: 20, 404: 32, 405: 31, 408: 2, 409: 31, 413: 31, 415: 31, 429: 33}


def error_response(status: int, message: str, error_code: int | None = None) -> Response:
    """ThingsBoard's error body: {"status", "message", "errorCode", "timestamp"}."""
    response = jsonify({"status": status, "message": message,
                        "errorCode": ERROR_CODES.get(status, 2) if error_code is None else error_code,
                        "timestamp": now_ms()})
    response.status_code = status
    return response
