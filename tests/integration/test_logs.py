"""The log: one JSON object per line, priority-prefixed for journald, secrets never in it."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TextIO

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from emailsync import SCHEMA_VERSION, __version__, redaction
from emailsync.report.runlog import FAILURES_SHOWN, SAMPLES
from emailsync.systemd import logs
from harness.backend import ECHOES, Backend, Behaviour
from tests.conftest import AppDb, EmailSync
from tests.unit.config.test_settings_property import bounded


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_each_event_is_one_json_line_with_timestamp_level_and_fields(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(stream=stream)
        structlog.get_logger().info("user_synced", user_id=42, status=200)

    [line] = read_lines(out)
    event = json.loads(line)
    assert event["event"] == "user_synced" and event["level"] == "info"
    assert (event["user_id"], event["status"]) == (42, 200)
    assert event["timestamp"].endswith("Z")


def journal_stream(stream: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``stream`` the journal stream, as systemd announces it."""
    info = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")


def parse_journal_datagram(data: bytes) -> dict[str, str]:
    fields = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            data = rest
        else:
            size = struct.unpack("<Q", rest[:8])[0]
            fields[line.decode()] = rest[8 : 8 + size].decode()
            data = rest[8 + size + 1 :]
    return fields


def test_under_journald_each_line_is_sent_natively_with_priority_and_searchable_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "journal.sock"))
    receiver.settimeout(2)
    out = tmp_path / "out"
    with out.open("w") as stream:
        journal_stream(stream, monkeypatch)
        logs.configure(stream=stream, journal_socket=str(tmp_path / "journal.sock"))
        structlog.contextvars.bind_contextvars(run_id="run-1")
        structlog.get_logger().warning("user_failed", user_id="bob\nsmith", status=500)
        structlog.contextvars.clear_contextvars()

    fields = parse_journal_datagram(receiver.recv(65536))
    assert out.read_text() == ""  # nothing twice
    assert (fields["PRIORITY"], fields["SYSLOG_IDENTIFIER"]) == ("4", "email-sync")
    assert (fields["EMAIL_SYNC_EVENT"], fields["EMAIL_SYNC_RUN_ID"]) == ("user_failed", "run-1")
    assert fields["EMAIL_SYNC_USER_ID"] == "bob\nsmith"
    assert json.loads(fields["MESSAGE"])["status"] == 500


def test_lines_carry_the_syslog_priority_when_the_journal_socket_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        journal_stream(stream, monkeypatch)
        logs.configure(level="debug", stream=stream, journal_socket=str(tmp_path / "no-such.sock"))
        log = structlog.get_logger()
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")

    assert [line[:3] for line in read_lines(out)] == ["<7>", "<6>", "<4>", "<3>"]
    assert json.loads(read_lines(out)[0][3:])["event"] == "d"


def test_no_priority_prefix_when_journal_stream_names_another_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(stream=stream)
        structlog.get_logger().info("x")

    assert read_lines(out)[0].startswith("{")


def test_level_filters_lower_events(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(level="warning", stream=stream)
        structlog.get_logger().info("hidden")
        structlog.get_logger().warning("shown")

    assert [json.loads(line)["event"] for line in read_lines(out)] == ["shown"]


def test_secrets_and_url_passwords_are_redacted_in_every_field(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(secrets=["tok-1234-secret"], stream=stream)
        structlog.get_logger().error(
            "failed", error="auth tok-1234-secret rejected", url="postgresql://app:pw-9876@db/app"
        )

    text = out.read_text()
    assert "tok-1234-secret" not in text and "pw-9876" not in text
    assert "postgresql://app:***@db/app" in text


def test_secrets_are_redacted_inside_lists_and_dicts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(secrets=["tok-1234-secret"], stream=stream)
        structlog.get_logger().warning("users_quarantined", users=[{"user_id": 1, "reason": "echo tok-1234-secret"}])

    assert "tok-1234-secret" not in out.read_text()
    assert json.loads(read_lines(out)[0])["users"] == [{"user_id": 1, "reason": "echo ***"}]


SECRET = 'tok-S3cr3t/+=Zq9 é"\\x'  # a slash, a plus, an equals sign, a space, non-ASCII, a quote, a backslash


def leaks(text: str, secret: str) -> list[str]:
    """The spellings of ``secret`` that ``text`` still holds whole, or (but for base64's) any MIN_PARTIAL
    characters of."""
    found = []
    for name, echo in ECHOES.items():
        spelled = echo(secret)
        pieces = [spelled] if "base64" in name or name == "basic" else windows(spelled)
        found += [name] if any(piece in text for piece in pieces) else []
    return found


def windows(text: str) -> list[str]:
    return [text[i : i + redaction.MIN_PARTIAL] for i in range(max(1, len(text) - redaction.MIN_PARTIAL + 1))]


@pytest.mark.parametrize("spelling", ECHOES)
def test_a_secret_is_redacted_in_each_spelling_an_echo_can_take(spelling: str) -> None:
    logs.configure(secrets=[SECRET])

    shown = redaction.redact(f"HTTP 400: token {ECHOES[spelling](SECRET)} rejected")

    assert leaks(shown, SECRET) == [] and "***" in shown


@bounded(200)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=redaction.MIN_PARTIAL),
    spelling=st.sampled_from(list(ECHOES)),
    before=st.text(max_size=5),
    after=st.text(max_size=5),
)
def test_no_spelling_of_any_secret_survives_redaction(secret: str, spelling: str, before: str, after: str) -> None:
    logs.configure(secrets=[secret])

    assert leaks(redaction.redact(before + ECHOES[spelling](secret) + after), secret) == []


def test_a_prefix_shorter_than_min_partial_is_left_as_is() -> None:
    """The documented limit: a few leading characters of a secret are too common in ordinary text to redact."""
    logs.configure(secrets=[SECRET])

    short = SECRET[: redaction.MIN_PARTIAL - 1]
    assert redaction.redact(f"token {short}") == f"token {short}"


def test_a_secret_our_own_cut_goes_through_is_redacted_up_to_the_cut() -> None:
    logs.configure(secrets=[SECRET])

    shown = redaction.redact_and_truncate("x" * 90 + SECRET + "y" * 1000, 100)

    assert shown.startswith("x" * 90 + "***") and SECRET[: redaction.MIN_PARTIAL] not in shown


def test_a_url_password_with_an_unencoded_at_sign_is_redacted_whole() -> None:
    logs.configure()

    assert (
        redaction.redact("bad port in postgresql://app:p@ss:w0rd@db:5432/app")
        == "bad port in postgresql://app:***@db:5432/app"
    )


def test_very_long_fields_are_cut_far_below_journald_line_limit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(stream=stream)
        structlog.get_logger().warning("user_failed", error="x" * 200_000)

    [line] = read_lines(out)
    assert len(line) < 8 * 1024
    assert "more chars" in json.loads(line)["error"]


def test_a_run_never_logs_the_token_or_the_database_password(pg: AppDb, email_sync: EmailSync, tmp_path: Path) -> None:
    pg.add_users(3)
    token = tmp_path / "token"
    token.write_text("very-secret-token")
    token.chmod(0o600)
    password_url = pg.url.replace("postgres@", "postgres:db-pass-4321@")  # trust auth ignores the password
    with Backend(token="very-secret-token") as backend:
        # A backend that echoes what it got, token included, into its error body.
        backend.script(2, Behaviour(status=400, body=b'{"error": "bad request from Bearer very-secret-token"}'))
        email_sync.configure(pg, backend, database={"url": password_url}, backend={"token_file": str(token)})
        result = email_sync("run")

    assert result.code == 0, result.stdout
    assert "***" in pg.state(2).last_error
    tables = [list(map(str, row)) for row in pg.runs() + pg.rows("SELECT * FROM email_sync_user_state")]
    everything = result.stdout + result.stderr + json.dumps(tables)
    assert "very-secret-token" not in everything and "db-pass-4321" not in everything


def test_version_answers_without_importing_the_heavy_modules() -> None:
    code = (
        "import sys\nfrom emailsync.commands import cli\n"
        "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'urllib3', 'requests', 'structlog') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.splitlines() == [f"email-sync {__version__} (database schema v{SCHEMA_VERSION})", "[]"]


def test_a_run_of_thousands_logs_its_start_its_end_and_a_bounded_number_of_lines_between(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """journald keeps a bounded number of lines per unit and interval: a run's lines do not grow with its users."""
    users = pg.add_users(1500)
    bad_request = {user for user in users if user % 10 == 0}  # more of each kind than are shown one by one
    broken = {user for user in users if user % 10 == 5}  # never enough in a row to open the circuit
    for user in bad_request:
        backend.script(user, Behaviour(status=400))
    for user in broken:
        backend.script(user, Behaviour(status=500))
    email_sync.configure(pg, backend)

    result = email_sync("run")

    assert result.code == 0, result.stdout
    names = Counter(event["event"] for event in result.events)
    assert names["cycle_started"] == names["cycle_finished"] == 1
    assert names["user_synced"] == 0 and names["user_failed"] == 2 * FAILURES_SHOWN
    assert set(names) <= {"cycle_started", "cycle_finished", "user_failed", "failures_summarized", "progress"}
    assert names["failures_summarized"] <= names["progress"] + 1
    finished = result.event("cycle_finished")
    assert (finished["synced"], finished["failed"]) == (1200, 300)
    summary = [event for event in result.events if event["event"] == "failures_summarized"][-1]
    assert summary["failed"] == {"user_error": 150, "server_error": 150}
    assert summary["not_shown"] == {"user_error": 150 - FAILURES_SHOWN, "server_error": 150 - FAILURES_SHOWN}
    shown = {event["user_id"] for event in result.events if event["event"] == "user_failed"}
    sampled = summary["sample_user_ids"]
    assert set(sampled["user_error"]) <= bad_request - shown and set(sampled["server_error"]) <= broken - shown
    assert len(sampled["user_error"]) == len(sampled["server_error"]) == SAMPLES
    assert pg.synced_ids() == set(users) - bad_request - broken


def test_at_debug_every_user_has_a_line(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    users = pg.add_users(FAILURES_SHOWN + 60)
    failing = set(users[: FAILURES_SHOWN + 10])
    for user in failing:
        backend.script(user, Behaviour(status=400))
    email_sync.configure(pg, backend, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0, result.stdout
    synced = [event for event in result.events if event["event"] == "user_synced"]
    failed = [event for event in result.events if event["event"] == "user_failed"]
    assert {event["user_id"] for event in synced} == set(users) - failing and len(synced) == 50
    assert {event["user_id"] for event in failed} == failing and len(failed) == len(failing)
    assert Counter(event["level"] for event in failed) == {"warning": FAILURES_SHOWN, "debug": 10}
    assert {event["level"] for event in synced} == {"debug"}
