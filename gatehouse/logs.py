"""Logging for the Gatehouse processes: readable text lines by default, or one JSON object per
line (`--log-format json`) for log collectors. Both go to stderr; the listeners' "... listening
on" lines stay plain lines on stdout.

Nothing here filters secrets: no Gatehouse log call is given a token, a password, a provisioning
secret or a JWT, and request paths (which hold HTTP and CoAP devices' tokens) are logged only
through `redact_token_path`.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime

FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# /api/v1/{token}/{feature}...: ThingsBoard's device API paths (HTTP, and CoAP through the bridge).
_TOKEN_PATH = re.compile(r"^(/?api/v1/)(?!(?:telemetry|attributes|rpc|claim|provision)(?:/|$))[^/?]+")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601, ms), level, logger, message, and
    `exception` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RateLimit(logging.Filter):
    """Lets through at most `burst` records from one line of code per `period` seconds. The
    first record let through after some were held back says how many.

    For processes whose clients can make them log at will (a refused login, a malformed packet
    per connection): a flood of them must not fill the disk. Keyed by where the record was made,
    not by its text, so that the table stays as small as the code."""

    def __init__(self, burst: int = 10, period: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.burst, self.period, self._clock = burst, period, clock
        self._windows: dict[tuple[str, int], list] = {}  # call site -> [start, passed, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = (record.pathname, record.lineno)
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            held_back = window[2] if window is not None else 0
            window = self._windows[key] = [now, 0, 0]
            if held_back:  # (no "%" in the note: the message is a %-format string)
                record.msg = f"{record.msg} ({held_back} more like this in {self.period:g} s were not logged)"
        if window[1] >= self.burst:
            window[2] += 1
            return False
        window[1] += 1
        return True


def configure_logging(fmt: str = "text", level: int | str = logging.INFO, stream=None, *,
                      rate_limit: RateLimit | None = None) -> None:
    """Replace the root logger's handlers with one in format `fmt` ("text" or "json"), with
    `rate_limit` on it if given."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: choose {' or '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    if rate_limit is not None:
        handler.addFilter(rate_limit)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def announce(line: str) -> None:
    """Print a listener's "... listening on" line (which `gatehouse up` and the tests read) in
    one write. print() writes the text and the newline separately, and with an unbuffered
    stdout (PYTHONUNBUFFERED, usual in containers) a log line from another thread could land
    between the two: the port then seemed to be the end of that log line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def redact_token_path(path: str) -> str:
    """A device API path fit for a log line: /api/v1/TOKEN/telemetry -> /api/v1/***/telemetry."""
    return _TOKEN_PATH.sub(r"\1***", path, count=1)
