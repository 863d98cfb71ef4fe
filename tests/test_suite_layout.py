"""The test suite's own layout: test modules import shared helpers from helper modules
(conftest.py, devices.py, mqtt_client.py, ...), never from one another, so a test module can be
run, moved or split on its own and helpers have one home."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, name within tests/) of every module of this package an import names, at any depth
    (imports inside functions too): `from .x import y` names x, `from . import x` names x."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.removeprefix("tests.")) for alias in node.names
                      if alias.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                package = module
            elif node.level == 0 and (module == "tests" or module.startswith("tests.")):
                package = module.removeprefix("tests").removeprefix(".")
            else:
                continue
            found += [(node.lineno, package)] if package else [(node.lineno, alias.name) for alias in node.names]
    return found


def imports_of_test_modules(source: str) -> list[str]:
    return [f"line {line}: {name}" for line, name in imported_modules(source) if name.startswith("test_")]


@pytest.mark.parametrize("source, expected", [
    ("from .test_metrics import counts", ["line 1: test_metrics"]),
    ("from tests.test_metrics import counts", ["line 1: test_metrics"]),
    ("import tests.test_metrics", ["line 1: test_metrics"]),
    ("from . import test_metrics", ["line 1: test_metrics"]),
    ("from tests import test_metrics as m", ["line 1: test_metrics"]),
    ("def f():\n    from .test_mqtt5 import read\n", ["line 2: test_mqtt5"]),
    ("from . import devices, test_mqtt5", ["line 1: test_mqtt5"]),
    ("from .metrics_scrape import counts, test_helper", []),
    ("from . import async_mqtt, load_generators", []),
    ("import test_metrics", []),  # not a module of this package
    ("from gatehouse.test_data import x", []),
], ids=["relative", "absolute from", "absolute import", "module from package", "module from package, aliased",
        "inside a function", "a helper and a test module",
        "helper module", "helper modules from package", "outside the package", "another package"])
def test_the_check_finds_every_form_of_importing_a_test_module(source, expected):
    assert imports_of_test_modules(source) == expected


def test_the_suite_has_test_modules_to_check():
    assert len(TEST_MODULES) > 40


@pytest.mark.parametrize("path", TEST_MODULES, ids=[path.name for path in TEST_MODULES])
def test_no_test_module_imports_another(path):
    assert imports_of_test_modules(path.read_text()) == []
