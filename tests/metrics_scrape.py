"""Reading a running process's Prometheus /metrics: every sample, or a counter's non-zero ones."""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics on `port`: {sample name: {label values sorted by label name: value}}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(value for _, value in sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def counts(port: int, name: str) -> dict[tuple, float]:
    """A counter's (or a histogram's _count) samples that are not zero."""
    return {labels: value for labels, value in scrape(port).get(name, {}).items() if value}
