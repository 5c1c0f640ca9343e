"""Import arrows point one way: the import-linter contracts of pyproject.toml hold, and no module of the package
reaches itself through its imports (function-level ones included: a lazy import that dodges a cycle is a cycle)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

import grimp  # installed with import-linter

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    """The layers, env-contract and acyclic contracts, checked as CI's ``lint-imports`` checks them (in a subprocess:
    the command configures logging process-wide)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run(
        [sys.executable, "-c", command, "--no-cache", "--no-logo", "--config", "pyproject.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("kpg_lightning", cache_dir=None)
    assert len(graph.modules) > 30  # the whole package was found (callbacks and conf through their symlinks)
    loops = []
    for component in _cycles(graph):
        start = component[0]
        step = next(m for m in sorted(graph.find_modules_directly_imported_by(start)) if m in component)
        loops.append(" -> ".join([start, *graph.find_shortest_chain(importer=step, imported=start)]))
    assert not loops, "import cycles: " + "; ".join(loops)


def test_a_lazy_import_closes_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not vacuous: grimp records an import inside a function, and the cycle it closes is reported."""
    package = tmp_path / "lazy_cycle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from lazy_cycle.high import g\n    return g\n")
    (package / "high.py").write_text("from lazy_cycle.low import f\n\n\ndef g():\n    return f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("lazy_cycle", cache_dir=None)) == [["lazy_cycle.high", "lazy_cycle.low"]]


def test_no_python_file_over_400_lines():
    """House style: a file that grows past ~400 lines wants splitting by responsibility."""
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    long = {f: n for f in files if (n := len((root / f).read_text().splitlines())) > 400}
    assert not long, f"over 400 lines: {long}"
