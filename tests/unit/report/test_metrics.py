"""The metrics textfile, as prometheus_client writes it: timestamps at full precision, and the hosts awaiting an
upgrade, kept while the database is unreachable."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from emailsync import __version__
from emailsync.errors import EXIT_OK, EXIT_TEMPFAIL
from emailsync.report import metrics
from harness.backend import Backend
from tests.conftest import AppDb, EmailSync, a_newer_release_migrated

REFUSED = "postgresql://postgres@127.0.0.1:1/refused"  # nothing listens on port 1


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read(textfile: Path) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(textfile.read_text())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def awaiting(samples: Samples) -> dict[tuple[str, str], float]:
    """email_sync_host_awaiting_upgrade by (host, release)."""
    return {
        (dict(labels)["host"], dict(labels)["release"]): v
        for (name, labels), v in samples.items()
        if name == "email_sync_host_awaiting_upgrade"
    }


def test_a_timestamp_round_trips_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moment = 1796530123.4567891
    monkeypatch.setattr(metrics.time, "time", lambda: moment)
    textfile = tmp_path / "email_sync.prom"

    metrics.run_started(str(textfile))

    assert value(read(textfile), "email_sync_run_started_timestamp_seconds") == moment


def test_a_host_older_than_the_schema_is_counted_and_named_as_awaiting_an_upgrade(
    app_db: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_newer_release_migrated(app_db, monkeypatch)
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(app_db, backend, metrics={"textfile": str(textfile)}, sync={"host_id": "old-host"})

    assert email_sync("run").code == EXIT_OK  # stands aside

    samples = read(textfile)
    assert value(samples, "email_sync_hosts_awaiting_upgrade") == 1
    assert awaiting(samples) == {("old-host", __version__): 1}


def test_the_hosts_awaiting_an_upgrade_keep_their_last_values_while_the_database_is_unreachable(
    app_db: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_newer_release_migrated(app_db, monkeypatch)
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(app_db, backend, metrics={"textfile": str(textfile)}, sync={"host_id": "old-host"})
    assert email_sync("run").code == EXIT_OK
    email_sync.configure(
        app_db, backend, metrics={"textfile": str(textfile)}, sync={"host_id": "old-host"}, database={"url": REFUSED}
    )

    assert email_sync("run").code == EXIT_TEMPFAIL

    samples = read(textfile)
    assert value(samples, "email_sync_database_up") == 0
    assert value(samples, "email_sync_hosts_awaiting_upgrade") == 1
    assert awaiting(samples) == {("old-host", __version__): 1}
