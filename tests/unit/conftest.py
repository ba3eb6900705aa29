"""The unit tier: no database server and no network beyond 127.0.0.1. The app's database here is the embedded
SQLite; tests/integration imports the tests that take it and runs them again on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AppDb, _fresh_app_db


@pytest.fixture
def app_db(tmp_path: Path) -> Iterator[AppDb]:
    """The app's database on SQLite, in a file of this test's own, emptied and migrated."""
    app = _fresh_app_db(f"sqlite:///{tmp_path / 'app.db'}", "sqlite")
    yield app
    app.engine.dispose()
