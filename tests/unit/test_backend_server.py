"""Tests for the stand-in backend in harness/backend.py."""

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.backend import Backend, Behaviour, Overload

ROOT = Path(__file__).resolve().parents[2]
SYNC = "/api/v1/test/sync/start"


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend() as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        client.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
        yield client


def sync(
    session: requests.Session,
    backend: Backend,
    user_id: Any = 1,
    email: str = "user@example.com",
    timeout: float | tuple[float, float] = 5.0,
    **kwargs: Any,
) -> requests.Response:
    body = {"user_id": user_id, "email": email, "max_emails": 50}
    return session.post(backend.base_url + SYNC, json=body, timeout=timeout, **kwargs)


def test_scripted_sequence_per_user_last_behaviour_repeats(backend: Backend, session: requests.Session) -> None:
    backend.script(7, Behaviour(status=503), Behaviour(status=500), Behaviour(status=200, body=b'{"ok": 1}'))
    statuses = [sync(session, backend, user_id=7).status_code for _ in range(5)]
    assert statuses == [503, 500, 200, 200, 200]
    assert sync(session, backend, user_id=7).json() == {"ok": 1}


def test_script_matches_user_ids_after_str(backend: Backend, session: requests.Session) -> None:
    backend.script(7, Behaviour(status=502))
    assert sync(session, backend, user_id="7").status_code == 502


def test_scripts_are_independent_per_user(backend: Backend, session: requests.Session) -> None:
    backend.script(1, Behaviour(status=500), Behaviour(status=200))
    backend.script(2, Behaviour(status=429), Behaviour(status=201))
    assert sync(session, backend, user_id=1).status_code == 500
    assert sync(session, backend, user_id=2).status_code == 429
    assert sync(session, backend, user_id=2).status_code == 201
    assert sync(session, backend, user_id=1).status_code == 200
    assert sync(session, backend, user_id=3).status_code == 200  # unscripted


def test_default_behaviour_applies_to_unscripted_users(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(status=503))
    backend.script(1, Behaviour(status=200))
    response = sync(session, backend, user_id=2)
    assert response.status_code == 503
    assert response.json() == {"error": "service unavailable"}
    assert sync(session, backend, user_id=1).status_code == 200


def test_default_success_body_reports_emails_synced(backend: Backend, session: requests.Session) -> None:
    email = "someone@example.org"
    response = sync(session, backend, email=email)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"emails_synced": len(email) % 7}


def test_wrong_token_gets_401(session: requests.Session) -> None:
    with Backend(token="s3cret") as backend:
        wrong = sync(session, backend, headers={"Authorization": "Bearer nope"})
        missing = sync(session, backend)
        right = sync(session, backend, headers={"Authorization": "Bearer s3cret"}, timeout=5)
    assert (wrong.status_code, missing.status_code, right.status_code) == (401, 401, 200)
    assert wrong.json() == {"error": "unauthorized"}


def test_rejected_token_does_not_consume_the_script(session: requests.Session) -> None:
    with Backend(token="s3cret") as backend:
        backend.script(1, Behaviour(status=202), Behaviour(status=500))
        assert sync(session, backend, user_id=1).status_code == 401
        assert (
            sync(session, backend, user_id=1, headers={"Authorization": "Bearer s3cret"}, timeout=5).status_code == 202
        )


def test_get_on_sync_path_is_405_with_allow_post(backend: Backend, session: requests.Session) -> None:
    response = session.get(backend.base_url + SYNC, timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_options_on_sync_path_is_204_with_allow(backend: Backend, session: requests.Session) -> None:
    response = session.options(backend.base_url + SYNC, timeout=5)
    assert response.status_code == 204
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert response.content == b""


def test_unknown_path_is_404(backend: Backend, session: requests.Session) -> None:
    assert session.get(backend.base_url + "/nope", timeout=5).status_code == 404
    assert session.post(backend.base_url + "/api/v1/other", json={}, timeout=5).status_code == 404
    assert session.post(backend.base_url + "/health", json={}, timeout=5).status_code == 404


def test_invalid_json_on_sync_path_is_400(backend: Backend, session: requests.Session) -> None:
    response = session.post(backend.base_url + SYNC, data=b"{not json", timeout=5)
    assert response.status_code == 400
    assert backend.sync_calls()[0].json is None


def test_custom_paths_are_served(session: requests.Session) -> None:
    with Backend("/sync", "/ping") as backend:
        assert session.post(backend.base_url + "/sync", json={"user_id": 1}, timeout=5).status_code == 200
        assert session.get(backend.base_url + "/ping", timeout=5).status_code == 200
        assert session.post(backend.base_url + SYNC, json={"user_id": 1}, timeout=5).status_code == 404


def test_health_status_is_configurable(backend: Backend, session: requests.Session) -> None:
    healthy = session.get(backend.base_url + "/health", timeout=5)
    backend.health_status = 503
    unhealthy = session.get(backend.base_url + "/health", timeout=5)
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
    assert (unhealthy.status_code, unhealthy.json()) == (503, {"status": "unhealthy"})


def test_hang_returns_nothing_before_client_read_timeout(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(hang=True))
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        sync(session, backend, timeout=(2.0, 0.3))
    assert time.monotonic() - started >= 0.3
    assert len(backend.sync_calls()) == 1  # recorded even though never answered


def test_stop_returns_promptly_while_request_hangs(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(hang=True))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            sync(session, backend, timeout=30)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=client, daemon=True)
    caller.start()
    assert backend.wait_for_sync_calls(1, timeout=5)
    stopper = threading.Thread(target=backend.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=5)
    assert not stopper.is_alive()  # stop() did not wait for the hanging handler
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert len(errors) == 1  # the connection was closed without an answer


def test_trickle_defeats_client_read_timeout_until_stop(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(trickle=0.05))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            sync(session, backend, timeout=(2.0, 0.3))
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=client, daemon=True)
    caller.start()
    time.sleep(1.0)
    assert caller.is_alive()  # > 3 read timeouts have passed without a ReadTimeout
    backend.stop()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert not isinstance(errors[0], requests.exceptions.ReadTimeout)


def test_delay_postpones_the_answer(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(delay=0.3))
    started = time.monotonic()
    assert sync(session, backend).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_latency_is_the_default_delay(session: requests.Session) -> None:
    with Backend(latency=0.3) as backend:
        started = time.monotonic()
        assert sync(session, backend).status_code == 200
        assert time.monotonic() - started >= 0.3


def test_close_drops_the_connection_without_response(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(close=True))
    with pytest.raises(requests.exceptions.ConnectionError):
        sync(session, backend)


def test_retry_after_header(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(status=429, retry_after="7"))
    response = sync(session, backend)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_extra_headers_and_body(backend: Backend, session: requests.Session) -> None:
    backend.set_default(
        Behaviour(status=307, body=b"moved", headers={"Location": "/elsewhere", "Content-Type": "text/plain"})
    )
    response = sync(session, backend, allow_redirects=False)
    assert response.status_code == 307
    assert response.headers["Location"] == "/elsewhere"
    assert response.headers["Content-Type"] == "text/plain"
    assert response.content == b"moved"


def test_recorded_headers_and_json(backend: Backend, session: requests.Session) -> None:
    before = time.monotonic()
    sync(
        session,
        backend,
        user_id=42,
        email="a@b.c",
        headers={"Authorization": "Bearer t", "Idempotency-Key": "k1"},
    )
    (call,) = backend.sync_calls()
    assert (call.method, call.path) == ("POST", SYNC)
    assert call.headers["Authorization"] == "Bearer t"
    assert call.headers["Idempotency-Key"] == "k1"
    assert call.header("content-type") == "application/json"
    assert call.json == {"user_id": 42, "email": "a@b.c", "max_emails": 50}
    assert json.loads(call.body) == call.json
    assert call.user_id == 42
    assert before <= call.at <= time.monotonic()


def test_requests_include_health_and_unknown_paths(backend: Backend, session: requests.Session) -> None:
    session.get(backend.base_url + "/health", timeout=5)
    session.get(backend.base_url + "/nope?x=1", timeout=5)
    sync(session, backend)
    assert [(r.method, r.path) for r in backend.requests()] == [
        ("GET", "/health"),
        ("GET", "/nope?x=1"),
        ("POST", SYNC),
    ]
    assert len(backend.sync_calls()) == 1


def test_sync_calls_filters_by_user(backend: Backend, session: requests.Session) -> None:
    for user_id in (1, 2, "1"):
        sync(session, backend, user_id=user_id)
    assert [c.user_id for c in backend.sync_calls(1)] == [1, "1"]
    assert [c.user_id for c in backend.sync_calls("2")] == [2]


def test_wait_for_sync_calls(backend: Backend, session: requests.Session) -> None:
    assert backend.wait_for_sync_calls(1, timeout=0.1) is False
    threading.Timer(0.2, lambda: sync(session, backend)).start()
    assert backend.wait_for_sync_calls(1, timeout=5) is True


def test_a_held_answer_is_sent_once_its_event_is_set_and_is_then_noted_as_answered(
    backend: Backend, session: requests.Session
) -> None:
    release = threading.Event()
    backend.set_default(Behaviour(status=201, hold=release))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(sync, session, backend)
        assert backend.wait_for_sync_calls(1)
        assert backend.wait_for_answers(1, timeout=0.3) is False
        assert [c.status for c in backend.sync_calls()] == [None]

        release.set()

        assert answer.result().status_code == 201
    assert backend.wait_for_answers(1) is True
    assert [c.status for c in backend.sync_calls()] == [201]


def test_a_call_that_is_never_answered_is_not_noted_as_answered(backend: Backend, session: requests.Session) -> None:
    backend.set_default(Behaviour(close=True))
    with pytest.raises(requests.ConnectionError):
        sync(session, backend)
    assert [c.status for c in backend.sync_calls()] == [None]


def test_fail_every_answers_500_on_every_nth_call(session: requests.Session) -> None:
    with Backend(fail_every=3) as backend:
        statuses = [sync(session, backend, user_id=i).status_code for i in range(6)]
    assert statuses == [200, 200, 500, 200, 200, 500]


def test_keep_alive_serves_several_requests_on_one_connection(backend: Backend) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    statuses, sockets = [], []
    try:
        for method, path, body in [
            ("GET", "/health", None),
            ("POST", SYNC, b'{"user_id": 1}'),
            ("GET", "/x", None),
        ]:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.append(connection.sock)
    finally:
        connection.close()
    assert statuses == [200, 200, 404]
    assert sockets[0] is not None and all(sock is sockets[0] for sock in sockets)  # never reconnected


def test_many_concurrent_connections(backend: Backend) -> None:
    backend.set_default(Behaviour(delay=0.5))

    def one(user_id: int) -> int:
        with requests.Session() as session:
            session.trust_env = False
            response = session.post(backend.base_url + SYNC, json={"user_id": user_id}, timeout=10)
            return response.status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=150) as pool:
        statuses = list(pool.map(one, range(150)))
    assert statuses == [200] * 150
    assert time.monotonic() - started < 30  # in parallel: one after the other would take 75 s


def test_stop_closes_idle_keep_alive_connections(backend: Backend) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    connection.request("GET", "/health")
    connection.getresponse().read()
    backend.stop()
    connection.auto_open = 0  # do not silently reconnect
    with pytest.raises((OSError, http.client.HTTPException)):
        connection.request("GET", "/health")
        connection.getresponse()
    connection.close()


def test_restart_reuses_the_port(backend: Backend, session: requests.Session) -> None:
    url = backend.base_url
    backend.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(url + "/health", timeout=2)
    backend.start()
    assert backend.base_url == url
    assert session.get(url + "/health", timeout=5).status_code == 200


def test_tls_serves_https(self_signed_cert: tuple[str, str], session: requests.Session) -> None:
    cert, key = self_signed_cert
    with Backend(tls=(cert, key)) as backend:
        assert backend.base_url.startswith("https://127.0.0.1:")
        response = sync(session, backend, verify=cert)
    assert response.status_code == 200


def test_program_prints_its_url_and_stops_on_sigterm(tmp_path: Path, session: requests.Session) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    args = ["--port", "0", "--token-file", str(token_file), "--sync-path", "/sync"]
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.backend", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        assert not url.endswith(":0")
        assert session.get(url + "/health", timeout=5).status_code == 200
        assert session.post(url + "/sync", json={"user_id": 1}, timeout=5).status_code == 401
        authorized = session.post(url + "/sync", json={"user_id": 1}, headers={"Authorization": "Bearer s3cret"})
        assert authorized.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stdout.read() == ""  # one line only, no request logging
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def concurrent_syncs(backend: Backend, count: int) -> list[tuple[int, float]]:
    """``count`` sync calls at once, each on its own connection: (status, seconds) of each."""

    def one(user_id: int) -> tuple[int, float]:
        with requests.Session() as client:
            client.trust_env = False
            started = time.monotonic()
            status = sync(client, backend, user_id=user_id).status_code
            return status, time.monotonic() - started

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_overload_latency_is_flat_up_to_the_knee() -> None:
    with Backend(overload=Overload(base=0.2, knee=4, refuse=8)) as backend:
        answers = concurrent_syncs(backend, 4)

    assert [status for status, _ in answers] == [200] * 4
    assert all(0.2 <= seconds < 0.4 for _, seconds in answers), answers


def test_overload_latency_climbs_beyond_the_knee_and_the_cap_answers_503_at_once() -> None:
    with Backend(overload=Overload(base=0.2, knee=2, refuse=4, slope=1.0)) as backend:
        answers = concurrent_syncs(backend, 6)
        refused, peak = backend.refused, backend.peak_in_flight

    assert sorted(status for status, _ in answers) == [200] * 4 + [503] * 2
    assert refused == 2
    assert peak >= 5  # a 503 may be out before the last call comes in
    assert max(seconds for status, seconds in answers if status == 200) >= 0.6  # the 4th: base x (1 + 2)
    assert all(seconds < 0.2 for status, seconds in answers if status == 503)
