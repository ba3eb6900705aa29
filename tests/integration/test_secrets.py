"""A backend that echoes the token back, in any spelling, never gets it into the log, the journal or the tables."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emailsync import redaction
from emailsync.commands import cli
from emailsync.errors import EXIT_TEMPFAIL
from emailsync.systemd import logs
from harness.backend import ECHOES, Backend, Behaviour
from tests.conftest import FAST, AppDb, write_config
from tests.unit.systemd.test_logs import parse_journal_datagram
from tests.unit.test_redaction import leaks

# What a token file can hold: visible ASCII (the token goes into an HTTP header), long enough for every rule.
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=redaction.MIN_PARTIAL, max_size=40)


@contextlib.contextmanager
def journal(path: Path) -> Iterator[list[dict[str, str]]]:
    """A datagram socket standing in for journald's, and the fields of every entry it received."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(0.05)
    entries: list[dict[str, str]] = []
    done = threading.Event()

    def drain() -> None:  # a full queue would block the sender: read as it comes
        while True:
            try:
                entries.append(parse_journal_datagram(receiver.recv(1 << 20)))
            except TimeoutError:
                if done.is_set():
                    return

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        yield entries
    finally:
        done.set()
        reader.join()
        receiver.close()
        path.unlink()


def run_echoed(
    pg: AppDb, backend: Backend, tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch, to: str
) -> list[str]:
    """One `email-sync run` in which user N's backend answers 500 quoting the token in the N-th spelling, and the
    circuit opens at the last of them (so the run's own error quotes one too); every value it logged (the names
    of fields and JSON keys are ours, fixed in the code, and never a secret's)."""
    pg.execute("DELETE FROM email_sync_user_state")
    pg.execute("DELETE FROM email_sync_runs")
    pg.execute("UPDATE users SET last_sync = NULL")
    for user, spelling in enumerate(ECHOES, start=1):
        backend.script(user, Behaviour(status=500, echo=spelling))
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    sections = {name: dict(keys) for name, keys in FAST.items()}
    sections["database"] = {"url": pg.url}
    sections["backend"] |= {"base_url": backend.base_url, "token_file": str(token_file)}
    sections["sync"] |= {"circuit_breaker": len(ECHOES)}
    config = write_config(tmp_path / "email-sync.toml", sections)
    out = tmp_path / "stdout"
    lines: list[str] = []
    values: list[str] = []
    with out.open("w") as stdout, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()) as err:
        if to == "journal":
            info = out.stat()
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
            monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(tmp_path / "journal.sock"))
            with journal(tmp_path / "journal.sock") as entries:
                code = cli.main(["--config", str(config), "run"])
            assert any("EMAIL_SYNC_USER_ID" in entry for entry in entries)
            lines = [entry.pop("MESSAGE") for entry in entries]
            values = [value for entry in entries for value in entry.values()]
        else:
            code = cli.main(["--config", str(config), "run"])
    assert code == EXIT_TEMPFAIL, out.read_text()
    assert err.getvalue() == "" and (to == "stdout" or out.read_text() == "")
    lines += out.read_text().splitlines()
    return values + [str(value) for line in lines for value in json.loads(line).values()]


@pytest.mark.parametrize("to", ["stdout", "journal"])
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(token=tokens)
def test_no_spelling_of_an_echoed_token_reaches_the_log_or_either_state_table(
    pg: AppDb, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, to: str, token: str
) -> None:
    if not pg.rows("SELECT id FROM users"):
        pg.add_users(len(ECHOES))

    logged = run_echoed(pg, backend, tmp_path, token, monkeypatch, to)

    errors = [row[0] for row in pg.rows("SELECT last_error FROM email_sync_user_state ORDER BY user_id")]
    [run_error] = [row.error for row in pg.runs()]
    assert len(errors) == len(ECHOES) and all("***" in error for error in errors), errors
    assert "***" in run_error
    assert [leaks(value, token) for value in logged if leaks(value, token)] == []
    assert [leaks(error, token) for error in errors] == [[]] * len(ECHOES)
    assert leaks(run_error, token) == []
