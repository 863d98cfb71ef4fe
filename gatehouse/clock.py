"""Time as Gatehouse stores and shows it: milliseconds since the epoch (ThingsBoard's `ts`), and
that time as UTC text for people (the CLI, the web UI, logs)."""
from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def utc_text(ms) -> str | None:
    """A ms-since-epoch time as `2026-11-29 19:40:01 UTC`; None when it is not a time."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return None


def timestamp_text(key: str, value) -> str | None:
    """An attribute's value as UTC text if it is a time by ThingsBoard's naming, a key ending in
    Time or Ts (lastActivityTime, lastConnectTime, ...) holding ms since the epoch; None for
    any other attribute, whose value is shown as it is."""
    return utc_text(value) if key.endswith(("Time", "Ts")) else None
