"""CONTRIBUTING.md's module map ("Code layout") is the tree's: a newcomer reads it instead of `ls -R emailsync`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "emailsync"


def mapped_modules(text: str) -> list[str]:
    """The modules the map names, dotted below emailsync (``sync.cycle``; ``model`` for the root's), in its order.

    The map is the first list of the "Code layout" section: a top-level item per subpackage (``- `sync/`: ...``) or
    for the package's root (any other top-level item), and an indented item per module (``  - `cycle`: ...``)."""
    section = text.split("\n## Code layout\n", 1)[1].split("\n## ", 1)[0]
    lines = section[section.index("\n- ") + 1 :].split("\n\n", 1)[0].splitlines()
    modules, package = [], ""
    for line in lines:
        if line.startswith("- "):
            subpackage = re.match(r"- `(\w+)/`", line)
            package = f"{subpackage[1]}." if subpackage else ""
        elif named := re.match(r" {2}- `(\w+)`", line):
            modules.append(package + named[1])
    return modules


def tree_modules() -> set[str]:
    """Every module of emailsync/, dotted below it; a package's __init__ and __main__ are the package itself."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if not path.name.startswith("__")
    }


MAP = mapped_modules((ROOT / "CONTRIBUTING.md").read_text())


def test_every_module_of_emailsync_has_a_line_in_the_map() -> None:
    missing = sorted(tree_modules() - set(MAP))
    assert not missing, f"CONTRIBUTING.md's module map has no line for {missing}"


def test_every_module_the_map_names_exists_where_it_says() -> None:
    gone = sorted(set(MAP) - tree_modules())
    assert not gone, f"CONTRIBUTING.md's module map names {gone}, not in emailsync/"


def test_the_map_names_each_module_once() -> None:
    twice = sorted({name for name in MAP if MAP.count(name) > 1})
    assert not twice, f"CONTRIBUTING.md's module map names {twice} more than once"
