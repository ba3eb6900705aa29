"""The tiers' contract: a test of tests/unit that takes the app's database (app_db, the embedded SQLite there) is
imported by a module of this tier, where app_db is PostgreSQL, so that no specification of a run is proven on one
database only; and only such tests are imported, so that none runs twice for nothing."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from types import ModuleType

import tests.integration
import tests.unit


def functions_of(package: ModuleType) -> Iterator[Callable[..., object]]:
    """Every test function each test module of ``package`` holds, its own or imported."""
    for found in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if found.name.rpartition(".")[2].startswith("test_"):
            module = importlib.import_module(found.name)
            yield from (test for name, test in vars(module).items() if name.startswith("test_") and callable(test))


def takes_app_db(test: Callable[..., object]) -> bool:
    return "app_db" in inspect.signature(test).parameters


def where(test: Callable[..., object]) -> str:
    return f"{test.__module__}::{test.__name__}"


def test_every_unit_test_of_the_apps_database_runs_on_postgresql_too() -> None:
    on_postgresql = set(functions_of(tests.integration))

    missing = [where(test) for test in functions_of(tests.unit) if takes_app_db(test) and test not in on_postgresql]

    assert missing == [], "import these into the tests/integration module of their subject"


def test_the_unit_tests_run_again_here_are_those_of_the_apps_database() -> None:
    again = [test for test in functions_of(tests.integration) if test.__module__.startswith("tests.unit.")]

    assert again and [where(test) for test in again if not takes_app_db(test)] == []
