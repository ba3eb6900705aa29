"""The log: one JSON object per line, priority-prefixed for journald or sent to it natively, secrets never in it,
long fields cut."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from emailsync.systemd import logs


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


def test_very_long_fields_are_cut_far_below_journald_line_limit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        logs.configure(stream=stream)
        structlog.get_logger().warning("user_failed", error="x" * 200_000)

    [line] = read_lines(out)
    assert len(line) < 8 * 1024
    assert "more chars" in json.loads(line)["error"]
