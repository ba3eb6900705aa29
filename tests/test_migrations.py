"""email-sync's schema as ordered steps: a database upgraded from any earlier version ends exactly where a fresh
install starts (tables, columns, indexes, constraints), on PostgreSQL and on SQLite."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, inspect

from emailsync import db, schema
from emailsync.config import DatabaseConfig
from tests.conftest import OUR_TABLES, AppDb


def schema_of(engine: Engine) -> dict[str, Any]:
    """Everything the database says about our tables, in a form two databases can be compared by."""
    inspector = inspect(engine)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in inspector.get_columns(table)
            ],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()),
                )
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            "checks": sorted(str(c["sqltext"]) for c in inspector.get_check_constraints(table)),
            "foreign keys": sorted(str(f) for f in inspector.get_foreign_keys(table)),
        }
        for table in OUR_TABLES
    }


def without_our_tables(app: AppDb) -> Engine:
    """An email-sync engine on the app's database, whose email-sync tables are gone: a new install."""
    app.drop_our_tables()
    return db.connect(DatabaseConfig(url=app.url, connect_timeout=5, statement_timeout=30))


@pytest.mark.parametrize("start", [step.version for step in schema.STEPS])
def test_an_upgrade_from_each_version_ends_with_the_schema_of_a_fresh_install(start: int, app_db: AppDb) -> None:
    fresh = schema_of(app_db.engine)
    engine = without_our_tables(app_db)

    assert schema.migrate(engine, target=start) == (None, start)
    assert schema.migrate(engine) == (start, schema.SCHEMA_VERSION)

    assert schema_of(app_db.engine) == fresh
    engine.dispose()


def test_each_step_is_recorded_once_in_order(app_db: AppDb) -> None:
    engine = without_our_tables(app_db)

    schema.migrate(engine)
    schema.migrate(engine)

    versions = [row[0] for row in app_db.rows(f"SELECT version FROM {db.VERSION_TABLE} ORDER BY applied_at, version")]
    assert versions == [step.version for step in schema.STEPS]
    engine.dispose()
