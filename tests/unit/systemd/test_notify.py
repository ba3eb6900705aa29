"""emailsync.systemd.notify (its policy, and sdnotify sending) against real AF_UNIX datagram sockets, like the one
systemd provides in $NOTIFY_SOCKET."""

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from emailsync.systemd.notify import Notifier, WatchdogSettings, watchdog_from_env

RECV_TIMEOUT = 2.0  # only reached when an expected datagram is missing
SILENCE_TIMEOUT = 0.2  # how long "nothing was sent" waits; absence, not performance


@dataclass
class Receiver:
    """A bound datagram socket standing in for systemd's notify socket."""

    name: str  # as it would appear in $NOTIFY_SOCKET
    sock: socket.socket

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def assert_silent(self) -> None:
        self.sock.settimeout(SILENCE_TIMEOUT)
        with pytest.raises(TimeoutError):
            self.sock.recv(4096)


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bind(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:] if name.startswith("@") else name)
    sock.settimeout(RECV_TIMEOUT)
    return sock


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A socket bound where $NOTIFY_SOCKET says, as systemd sets it for the service."""
    name = str(tmp_path / "notify.sock") if request.param == "path" else f"@emailsync-test-{uuid.uuid4().hex}"
    sock = _bind(name)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    yield Receiver(name, sock)
    sock.close()


def _vanish(receiver: Receiver) -> None:
    receiver.sock.close()
    if not receiver.name.startswith("@"):
        os.unlink(receiver.name)


# --- single notifications -------------------------------------------------------------


def test_ready_sends_ready_alone(receiver: Receiver) -> None:
    Notifier(True, None).ready()
    assert receiver.recv() == b"READY=1"


def test_status_sends_text(receiver: Receiver) -> None:
    Notifier(True, None).status("syncing 3 mailboxes")
    assert receiver.recv() == b"STATUS=syncing 3 mailboxes"


def test_status_replaces_non_ascii_with_question_marks(receiver: Receiver) -> None:
    Notifier(True, None).status("caf\u00e9 \u2603 \U0001f4e7 ok")
    assert receiver.recv() == b"STATUS=caf? ? ? ok"


def test_status_turns_line_breaks_into_spaces(receiver: Receiver) -> None:
    Notifier(True, None).status("first\nsecond\r\nREADY=1")
    assert receiver.recv() == b"STATUS=first second  READY=1"


def test_status_truncates_to_200_characters(receiver: Receiver) -> None:
    Notifier(True, None).status("\u00e9" + "x" * 300)
    assert receiver.recv() == b"STATUS=?" + b"x" * 199


def test_stopping_sends_stopping(receiver: Receiver) -> None:
    Notifier(True, None).stopping()
    assert receiver.recv() == b"STOPPING=1"


# --- progress -------------------------------------------------------------------------


def test_progress_without_watchdog_sends_status_only(receiver: Receiver) -> None:
    Notifier(True, None).progress("user 7 of 9\n\u00e9")
    assert receiver.recv() == b"STATUS=user 7 of 9 ?"


def test_progress_with_watchdog_pings_and_sends_status(receiver: Receiver) -> None:
    Notifier(True, WatchdogSettings(interval=30.0)).progress("user 7 of 9\n\u00e9")
    assert receiver.recv() == b"WATCHDOG=1\nSTATUS=user 7 of 9 ?"


def test_progress_without_watchdog_sends_at_most_once_per_second(receiver: Receiver) -> None:
    clock = FakeClock()
    notifier = Notifier(True, None, clock=clock)
    for now, text in [(0.0, "a"), (0.0, "b"), (0.5, "c"), (0.999, "d"), (1.0, "e"), (1.5, "f")]:
        clock.now = now
        notifier.progress(text)
    assert receiver.recv() == b"STATUS=a"
    assert receiver.recv() == b"STATUS=e"
    receiver.assert_silent()


@pytest.mark.parametrize(
    ("interval", "gap"),
    [(2.0, 0.5), (10.0, 1.0)],
    ids=["quarter-of-interval", "capped-at-one-second"],
)
def test_progress_with_watchdog_sends_at_most_once_per_gap(receiver: Receiver, interval: float, gap: float) -> None:
    clock = FakeClock()
    notifier = Notifier(True, WatchdogSettings(interval=interval), clock=clock)
    for now, text in [(100.0, "a"), (100.0 + gap * 0.99, "b"), (100.0 + gap, "c")]:
        clock.now = now
        notifier.progress(text)
    assert receiver.recv() == b"WATCHDOG=1\nSTATUS=a"
    assert receiver.recv() == b"WATCHDOG=1\nSTATUS=c"
    receiver.assert_silent()


def test_progress_first_call_sends_whatever_the_clock_says(receiver: Receiver) -> None:
    clock = FakeClock()
    clock.now = -1e9
    Notifier(True, None, clock=clock).progress("started")
    assert receiver.recv() == b"STATUS=started"


def test_progress_does_not_delay_other_notifications(receiver: Receiver) -> None:
    notifier = Notifier(True, None, clock=FakeClock())
    notifier.progress("a")
    notifier.status("b")
    notifier.progress("c")
    notifier.stopping()
    assert [receiver.recv() for _ in range(3)] == [b"STATUS=a", b"STATUS=b", b"STOPPING=1"]
    receiver.assert_silent()


# --- disabled and failing sockets ------------------------------------------------------


def test_disabled_notifier_sends_nothing_even_with_notify_socket_set(receiver: Receiver) -> None:
    notifier = Notifier(False, WatchdogSettings(interval=1.0))
    with capture_logs() as logs:
        notifier.ready()
        notifier.status("x")
        notifier.progress("x")
        notifier.stopping()
    assert not notifier.enabled
    assert logs == []
    receiver.assert_silent()


def test_vanished_socket_logs_notify_failed_without_raising(receiver: Receiver) -> None:
    notifier = Notifier(True, WatchdogSettings(interval=1.0))
    notifier.ready()
    assert receiver.recv() == b"READY=1"
    _vanish(receiver)
    with capture_logs() as logs:
        notifier.status("x")
        notifier.progress("x")
        notifier.stopping()
    assert [log["event"] for log in logs] == ["notify_failed"] * 3
    assert all(log["log_level"] == "warning" and log["error"] for log in logs)


def test_missing_socket_logs_notify_failed_without_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "never-bound.sock"))
    notifier = Notifier(True, None)
    with capture_logs() as logs:
        notifier.ready()
    assert [(log["event"], log["log_level"]) for log in logs] == [("notify_failed", "warning")]
    assert "No such file or directory" in logs[0]["error"]


def test_sends_again_once_the_socket_is_back(receiver: Receiver) -> None:
    notifier = Notifier(True, None)
    notifier.ready()
    assert receiver.recv() == b"READY=1"
    _vanish(receiver)
    with capture_logs():
        notifier.status("lost")
    with _bind(receiver.name) as again:
        notifier.status("found")
        assert again.recv(4096) == b"STATUS=found"


def test_a_full_notify_socket_is_a_warning_not_a_stall(receiver: Receiver) -> None:
    """systemd not reading its socket must not hold up the work loop: once the queue is full, sends fail at once."""
    notifier = Notifier(True, None)
    with capture_logs() as logs:
        for number in range(100_000):
            notifier.status(f"update {number}")
            if logs:
                break
    assert [(log["event"], log["log_level"]) for log in logs] == [("notify_failed", "warning")]
    assert receiver.recv() == b"STATUS=update 0"  # what fitted was delivered, in order


# --- configuration from the environment ------------------------------------------------


def test_from_env_uses_notify_socket_and_watchdog(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", "42")
    notifier = Notifier.from_env(pid=42)
    assert notifier.enabled
    assert notifier.watchdog == WatchdogSettings(interval=4.0)
    notifier.progress("up")
    assert receiver.recv() == b"WATCHDOG=1\nSTATUS=up"


def test_from_env_defaults_to_this_process_id(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_env()
    assert notifier.watchdog == WatchdogSettings(interval=1.0)
    notifier.ready()
    assert receiver.recv() == b"READY=1"


@pytest.mark.parametrize("socket_name", [None, ""])
def test_from_env_without_notify_socket_is_disabled(socket_name: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if socket_name is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", socket_name)
    assert not Notifier.from_env(pid=1).enabled


def test_watchdog_from_env_converts_microseconds_to_seconds() -> None:
    assert watchdog_from_env({"WATCHDOG_USEC": "2500000"}, pid=7) == WatchdogSettings(interval=2.5)


def test_watchdog_from_env_accepts_matching_pid() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}
    assert watchdog_from_env(env, pid=7) == WatchdogSettings(interval=1.0)


def test_watchdog_from_env_pid_mismatch_means_no_watchdog() -> None:
    with capture_logs() as logs:
        assert watchdog_from_env({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert logs == []


@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_PID": "7"}])
def test_watchdog_from_env_without_watchdog_usec_is_none(env: dict[str, str]) -> None:
    with capture_logs() as logs:
        assert watchdog_from_env(env, pid=7) is None
    assert logs == []


@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-1000000", " 1000000", "\u0661\u0662"])
def test_watchdog_from_env_invalid_watchdog_usec_is_none_with_warning(value: str) -> None:
    with capture_logs() as logs:
        assert watchdog_from_env({"WATCHDOG_USEC": value}, pid=7) is None
    assert logs == [
        {"event": "watchdog_env_invalid", "log_level": "warning", "variable": "WATCHDOG_USEC", "value": value}
    ]


@pytest.mark.parametrize("value", ["", "abc", "0", "-7"])
def test_watchdog_from_env_invalid_watchdog_pid_is_none_with_warning(value: str) -> None:
    with capture_logs() as logs:
        assert watchdog_from_env({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": value}, pid=7) is None
    assert logs == [
        {"event": "watchdog_env_invalid", "log_level": "warning", "variable": "WATCHDOG_PID", "value": value}
    ]
