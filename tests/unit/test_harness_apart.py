"""The tree's corners stay apart: the benchmark and the demo stand on harness/, never on tests/; the stand-ins in
harness/ borrow nothing from email-sync (a stand-in reading answers with email-sync's own code would hide its bugs);
and the package ships emailsync/ alone."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[2]


def used_modules(folder: str) -> set[str]:
    """The top-level names of every module the Python files under ``folder`` import or start with ``-m``."""
    names: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
            elif isinstance(node, ast.List | ast.Tuple):  # an argv: [python, "-m", "module", ...]
                words = [item.value if isinstance(item, ast.Constant) else None for item in node.elts]
                names |= {str(words[i + 1]) for i, word in enumerate(words[:-1]) if word == "-m" and words[i + 1]}
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("bench", {"tests"}),
        ("demo", {"tests", "bench"}),
        ("harness", {"tests", "bench", "demo", "emailsync"}),
    ],
)
def test_a_folder_uses_nothing_it_must_not_lean_on(folder: str, forbidden: set[str]) -> None:
    assert used_modules(folder), f"no Python found under {folder}/"
    assert not used_modules(folder) & forbidden


def test_the_scan_sees_imports_and_the_modules_children_are_started_with() -> None:
    """bench/ imports emailsync (clientcost.py) and starts harness.fast_backend with ``-m``: both are seen."""
    assert {"harness", "emailsync"} <= used_modules("bench")


def test_the_package_ships_emailsync_alone() -> None:
    """What `pip install .` (make bench) and the .deb's build put in the wheel: pyproject.toml's package list."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_namespace_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "emailsync" in packages
    assert [name for name in packages if name.split(".")[0] != "emailsync"] == []
