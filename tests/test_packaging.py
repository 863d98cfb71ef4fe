"""The package as pip builds it: every file the components read at run time is in the wheel, and
setuptools has nothing to warn about (it used to say the web UI's folders "would be ignored")."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_schema_and_the_web_ui_and_builds_without_warnings(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    output = build.stdout + build.stderr
    assert "would be ignored" not in output and "is absent from the `packages` configuration" not in output, output
    (wheel,) = tmp_path.glob("gatehouse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    ui = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "sidecar" / "ui").rglob("*")
          if path.is_file() and path.suffix in (".html", ".css", ".js")}
    assert ui and ui <= names, ui - names
    assert "gatehouse/schema.sql" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
