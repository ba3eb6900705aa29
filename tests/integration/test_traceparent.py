"""Every backend request carries a W3C traceparent whose trace id is the run's id: the backend's traces join the
run's log lines and its row in the runs table."""

from __future__ import annotations

import re
import uuid

from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def _traces(backend: Backend) -> list[tuple[str, str]]:
    """(trace id, span id) of every request the backend received, each asserted well formed."""
    found = []
    for request in backend.requests():
        match = TRACEPARENT.match(request.header("traceparent") or "")
        assert match, f"{request.method} {request.path}: traceparent {request.header('traceparent')!r}"
        assert match[2] != "0" * 16, "an all-zero span id is invalid"
        found.append((match[1], match[2]))
    return found


def test_every_request_of_a_run_carries_the_run_id_as_trace_id(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(3)
    email_sync.configure(pg, backend)

    result = email_sync("run")

    assert result.code == 0
    run_id = result.event("cycle_started")["run_id"]
    assert [row.id for row in pg.runs()] == [run_id]
    traces = _traces(backend)
    assert [r.method for r in backend.requests()].count("GET") == 1  # the health check is traced too
    assert len(traces) == 4
    assert {trace for trace, _ in traces} == {uuid.UUID(run_id).hex}


def test_every_attempt_has_a_span_of_its_own_retries_included(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    backend.script(1, Behaviour(status=503), Behaviour(status=502), Behaviour(status=200))
    email_sync.configure(pg, backend)

    assert email_sync("run").code == 0

    assert len(backend.sync_calls(1)) == 3
    spans = [span for _, span in _traces(backend)]
    assert len(spans) == 5 and len(set(spans)) == 5, spans


def test_sync_by_hand_traces_its_call_with_its_run_id(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend)

    result = email_sync("sync", "1")

    assert result.code == 0
    run_ids = {event["run_id"] for event in result.events if "run_id" in event}
    assert len(run_ids) == 1, result.stdout
    assert [trace for trace, _ in _traces(backend)] == [uuid.UUID(run_ids.pop()).hex]
