"""Layers import only downward: chain <- compress <- kernels <- bench, deploy.

Every import statement of every module counts, inside functions too (a lazy upward
import is still an upward dependency). Plugins reach chain through entry points
(``chainpress.plugins`` in pyproject.toml), never through an import in chain.
"""
import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

ALLOWED = {
    "chain": {"chain"},
    "compress": {"chain", "compress"},
    "kernels": {"chain", "compress", "kernels"},  # kernels read compress' int8/int4 weight format
    "bench": {"chain", "compress", "kernels", "bench"},
    "deploy": {"chain", "compress", "kernels", "bench", "deploy"},
}


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return out


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py")) if (REPO / package).is_dir() else []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package):
    bad = []
    for path in modules(package):
        for line, top in imports(path, package):
            if top in ALLOWED and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {top}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from bench.timing import x\n    import compress.stages\n")
    assert [t for _, t in imports(f, "chain")] == ["bench", "compress"]


def test_plugins_are_entry_points():
    text = (REPO / "pyproject.toml").read_text()
    for module in ("compress.stages", "kernels.stage", "bench.plugin"):
        assert f'"{module}"' in text
