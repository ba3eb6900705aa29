"""The project's scripts under packaging/ (not a package: they run as files) loaded as modules, for tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"


def load(filename: str) -> ModuleType:
    """packaging/FILENAME as a module (a name with a dash is fine)."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem.replace("-", "_"), PACKAGING / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
