"""The architecture rule: `networks/` and `transforms/` are leaves that never import each other or `pipeline/`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("networks", "transforms", "pipeline")
FORBIDDEN = {"networks": {"transforms", "pipeline"}, "transforms": {"networks", "pipeline"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("leaf", sorted(FORBIDDEN))
def test_leaves_do_not_import_each_other(leaf):
    files = sorted((ROOT / leaf).rglob("*.py"))
    assert files, f"{leaf}/ has no modules"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[leaf])
        for f in files
        if imported_packages(f) & FORBIDDEN[leaf]
    }
    assert not offenders, f"{leaf}/ must stay a leaf: {offenders}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_declares_all(package):
    missing = [
        str(f.relative_to(ROOT))
        for f in sorted((ROOT / package).rglob("*.py"))
        if "__all__" not in f.read_text(encoding="utf-8") and f.name != "__main__.py"
    ]
    assert not missing, f"modules without __all__: {missing}"
