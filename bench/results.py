"""The summary figures a benchmark hands to bench/report.py: each benchmark prints its own
tables for people, and with `--json FILE` also writes its headline figures there, each with the
baseline it was measured against in the same run."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    measurement: str
    value: float
    unit: str
    baseline: str = ""  # what the figure is compared with ("" when nothing)
    baseline_value: float | None = None
    ratio: float | None = None  # the figure's ratio as the benchmark defines it (usually value / baseline)
    target: str = ""  # e.g. ">= 0.80"; "" for figures given for information
    met: bool | None = None


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the summary figures to FILE as JSON (for bench/report.py)")


def write(path: Path | None, benchmark: str, figures: list[Figure]) -> None:
    if path is None:
        return
    rows = [{key: (None if isinstance(value, float) and not math.isfinite(value) else value)
             for key, value in asdict(figure).items()} for figure in figures]
    path.write_text(json.dumps({"benchmark": benchmark, "figures": rows}, indent=1) + "\n", encoding="utf-8")


def read(path: Path) -> tuple[str, list[Figure]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["benchmark"], [Figure(**row) for row in data["figures"]]
