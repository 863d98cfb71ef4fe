"""deploy/'s systemd units: `systemd-analyze verify` accepts them, and every command they run
is one the CLI knows, with options it knows."""
from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INSTALLED = "/opt/gatehouse/venv/bin/gatehouse"  # where deploy/README.md installs Gatehouse
UNITS = sorted(DEPLOY.glob("gatehouse*.service")) + sorted(DEPLOY.glob("gatehouse*.target"))


def commands(unit: Path) -> list[list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(unit)
    if not parser.has_section("Service"):
        return []
    return [shlex.split(parser["Service"][key]) for key in ("ExecStartPre", "ExecStart") if key in parser["Service"]]


def test_there_is_a_unit_for_each_component_and_a_target_for_them_all():
    assert [unit.name for unit in UNITS] == ["gatehouse-broker.service", "gatehouse-coap.service",
                                             "gatehouse-sidecar.service", "gatehouse.target"]


def test_systemd_analyze_verifies_the_units(tmp_path):
    # `make test` installs Debian's systemd for this; verify needs the programs to exist, so the
    # copies run this checkout's gatehouse instead of the installed path.
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: `make test` installs Debian's systemd"
    gatehouse = Path(sys.executable).with_name("gatehouse")
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, str(gatehouse)))
        copies.append(str(copy))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *copies], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in result.stderr.splitlines() if any(unit.name in line for unit in UNITS)]
    assert result.returncode == 0 and not problems, result.stderr


@pytest.mark.parametrize("unit", [unit for unit in UNITS if commands(unit)], ids=lambda unit: unit.name)
def test_every_command_of_a_unit_is_one_the_cli_accepts(unit):
    for argv in commands(unit):
        assert argv[0] == INSTALLED
        # The same options, asking for --help: click checks every option before the command runs.
        result = subprocess.run([sys.executable, "-m", "gatehouse", *argv[1:], "--help"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr}"
