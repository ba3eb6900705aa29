"""email-sync's schema as numbered steps."""

from __future__ import annotations

from emailsync.store import schema


def test_the_migration_steps_are_numbered_one_to_the_latest() -> None:
    assert [step.version for step in schema.STEPS] == list(range(1, schema.SCHEMA_VERSION + 1))


def test_the_schema_version_that_version_prints_is_the_last_steps() -> None:
    import emailsync

    assert schema.STEPS[-1].version == emailsync.SCHEMA_VERSION
