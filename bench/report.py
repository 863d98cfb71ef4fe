"""Run every Gatehouse benchmark (registry, MQTT, HTTP, CoAP, the soak: reconnect storm, memory
over time, telemetry beside an import; retention; PostgreSQL beside SQLite) one after another and
write bench/RESULTS.md: each headline figure with the baseline measured in the same run and their
ratio, the machine it ran on, the commands, and each benchmark's full output.

    python bench/report.py                     # the full runs (about 24 minutes on 2 cores)
    python bench/report.py --skip soak.py      # all but the 10-minute soak (about 12 minutes)
    python bench/report.py --only soak.py      # the soak alone (about 12 minutes)
    python bench/report.py --quick             # short runs, to check that everything works

Each benchmark runs in its own process with `--json` (bench/results.py); what it prints goes to
this terminal as it runs and into the report. A benchmark that fails is reported as failed, with
its output, and the others still run; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import results  # bench/results.py, beside this file
from machine import cpu_model, usable_cores  # bench/machine.py, beside this file

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# (script, its arguments for a quick run); the registry benchmark's quick run is a smaller registry.
BENCHMARKS = (("registry.py", ["--devices", "10000", "--seconds", "0.5", "--keys", "10000"]),
              ("mqtt.py", ["--quick"]), ("http.py", ["--quick"]), ("coap.py", ["--quick"]),
              ("soak.py", ["--quick"]), ("retention.py", ["--quick"]),
              # without --million: its 1,000,000-device registries are run on their own
              # (python bench/postgresql.py --million)
              ("postgresql.py", ["--quick"]))


@dataclass
class Run:
    script: str
    command: list[str]
    returncode: int
    seconds: float
    output: str
    benchmark: str = ""
    figures: tuple[results.Figure, ...] = ()


def run_benchmark(script: str, extra: list[str], json_path: Path) -> Run:
    command = [sys.executable, str(BENCH_DIR / script), *extra, "--json", str(json_path)]
    print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.monotonic()
    lines = []
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append(line)
    run = Run(script, command, process.returncode, time.monotonic() - started, "".join(lines))
    if process.returncode == 0 and json_path.exists():
        run.benchmark, figures = results.read(json_path)
        run.figures = tuple(figures)
    return run


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(runs: list[Run], report_command: list[str], started: datetime.datetime) -> str:
    out = ["# Gatehouse benchmark results", "",
           (f"Written by `{shlex.join(['python', *report_command])}` on {started:%Y-%m-%d %H:%M} UTC; "
            "every figure is compared with a baseline measured in the same run on the same machine."), "",
           f"- CPU: {cpu_model()} ({usable_cores()} cores)",
           f"- Python: {platform.python_implementation()} {platform.python_version()}",
           f"- Platform: {platform.platform()}", "",
           "| benchmark | measurement | figure | unit | baseline | baseline figure | ratio | target | met |",
           "|---|---|---:|---|---|---:|---:|---:|:---:|"]
    for run in runs:
        if run.returncode != 0:
            out.append(f"| {run.script} | FAILED (exit code {run.returncode}); see its output below | | | | | | | |")
            continue
        for f in run.figures:
            met = "" if f.met is None else ("yes" if f.met else "NO")
            out.append(f"| {run.benchmark} | {f.measurement} | {number(f.value)} | {f.unit} | {f.baseline} | "
                       f"{number(f.baseline_value)} | {number(f.ratio)} | {f.target} | {met} |")
    for run in runs:
        out += ["", f"## {run.benchmark or run.script}", "",
                (f"`{shlex.join(['python', str(Path(run.command[1]).relative_to(REPO_ROOT)), *run.command[2:-2]])}` "
                 f"— exit code {run.returncode}, {run.seconds:.0f} s"), "",
                "<details><summary>full output</summary>", "", "```", run.output.rstrip(), "```", "", "</details>"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs of each benchmark (a few minutes in all)")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md", help="where the report goes")
    scripts = [script for script, _ in BENCHMARKS]
    parser.add_argument("--only", action="append", choices=scripts, help="run only this benchmark (repeatable)")
    parser.add_argument("--skip", action="append", choices=scripts, default=[],
                        help="leave this benchmark out (repeatable); by default every one runs")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    runs = []
    with tempfile.TemporaryDirectory(prefix="gatehouse-report-") as temp:
        for script, quick_args in BENCHMARKS:
            if (args.only and script not in args.only) or script in args.skip:
                continue
            runs.append(run_benchmark(script, quick_args if args.quick else [], Path(temp) / f"{script}.json"))
    report_command = [str(Path(__file__).resolve().relative_to(REPO_ROOT)), *(argv if argv is not None else sys.argv[1:])]
    args.output.write_text(markdown(runs, report_command, started), encoding="utf-8")
    print(f"\nwrote {args.output}")
    return 0 if all(run.returncode == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
