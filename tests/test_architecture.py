"""The one direction of dependencies (docs/architecture.md), checked on every product module's
imports, lazy ones included: the domain (gatehouse) never imports a component nor the process
launcher; components (broker_plugin, sidecar, coap_bridge) never import each other; what a
running process needs (gatehouse.runtime) stands on its own; only the registry uses the storage
seam."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("broker_plugin", "sidecar", "coap_bridge")
# Not domain code: the command line (whose process-launching commands start components) and what
# a running process needs (default ports, /metrics server, readiness), which components use.
LAUNCHER = ("gatehouse.cli", "gatehouse.__main__")
RUNTIME = ("gatehouse.runtime",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = node.module or ""
            absolute = f"{base}.{target}".strip(".") if node.level else target
            found.add(absolute)
            found.update(f"{absolute}.{alias.name}" for alias in node.names)
    return found


PRODUCT = sorted(p for top in ("gatehouse", *COMPONENTS) for p in (ROOT / top).rglob("*.py"))


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", [p for p in PRODUCT if p.parts[len(ROOT.parts)] == "gatehouse"
                                  and not _within(module_name(p), LAUNCHER + RUNTIME)], ids=module_name)
def test_the_domain_imports_no_component_and_not_the_launcher(path):
    assert not {i for i in imports_of(path) if _within(i, COMPONENTS + LAUNCHER + RUNTIME)}


@pytest.mark.parametrize("path", [p for p in PRODUCT if _within(module_name(p), RUNTIME)], ids=module_name)
def test_the_runtime_helpers_import_nothing_else_of_the_product(path):
    product = ("gatehouse", *COMPONENTS)
    assert not {i for i in imports_of(path) if _within(i, product) and not _within(i, RUNTIME)}


@pytest.mark.parametrize("path", [p for p in PRODUCT if p.parts[len(ROOT.parts)] in COMPONENTS], ids=module_name)
def test_a_component_imports_no_other_component_and_not_the_launcher(path):
    own = path.parts[len(ROOT.parts)]
    others = tuple(c for c in COMPONENTS if c != own)
    assert not {i for i in imports_of(path) if _within(i, others + LAUNCHER)}


@pytest.mark.parametrize("path", PRODUCT, ids=module_name)
def test_only_the_registry_uses_the_storage_seam(path):
    if _within(module_name(path), ("gatehouse.registry", "gatehouse.storage")):
        return
    assert not {i for i in imports_of(path) if _within(i, ("gatehouse.storage",))}


def test_the_checks_see_imports_as_they_are_written():
    # The reader itself, on modules known to hold each kind: relative imports are resolved, and
    # the launcher's lazy imports of components (inside functions) are seen.
    assert {"gatehouse.storage", "gatehouse.registry.rules"} <= imports_of(ROOT / "gatehouse" / "registry" / "profiles.py")
    launcher_imports = {i for p in PRODUCT if _within(module_name(p), LAUNCHER) for i in imports_of(p)}
    assert {"broker_plugin.server", "sidecar.server", "coap_bridge.server"} <= launcher_imports
