"""The benchmark scripts import each other by module name (``benchmarks/`` on ``sys.path``): every name one
imports from another must exist there. Checked on the source (no imports: the benchmarks need TRL and models), so
a renamed helper fails here instead of in the middle of ``benchmarks/run_all.py``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


def top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_names_imported_from_other_benchmarks_exist(script: Path) -> None:
    local = {p.stem for p in SCRIPTS}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in local:
            missing = {a.name for a in node.names} - top_level_names(BENCH / f"{node.module}.py")
            assert not missing, f"{script.name}:{node.lineno} imports {sorted(missing)} from {node.module}.py"
