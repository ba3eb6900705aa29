"""What `email-sync run` tells systemd through $NOTIFY_SOCKET, received on a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailsync.errors import EXIT_CONFIG
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(0.5)
    yield receiver, path
    receiver.close()


def received(receiver: socket.socket) -> list[str]:
    datagrams = []
    while True:
        try:
            datagrams.append(receiver.recv(4096).decode("ascii"))
        except TimeoutError:
            return datagrams


def test_run_sends_ready_alone_then_progress_status(
    pg: AppDb, backend: Backend, email_sync: EmailSync, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    pg.add_users(5)
    email_sync.configure(pg, backend)

    result = email_sync.subprocess("run", env={"NOTIFY_SOCKET": path})

    assert result.code == 0
    datagrams = received(receiver)
    assert datagrams[0] == "READY=1"
    assert datagrams[-1] == "STATUS=synced 5/5, 0 failed"
    assert not any("WATCHDOG=1" in d for d in datagrams)  # no watchdog was asked for


def test_run_pings_the_watchdog_it_was_given(
    pg: AppDb, backend: Backend, email_sync: EmailSync, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    pg.add_users(3)
    email_sync.configure(pg, backend)

    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"}
    result = email_sync.subprocess("run", env=env)

    assert result.code == 0
    assert any(d.startswith("WATCHDOG=1\nSTATUS=") for d in received(receiver))


def test_watchdog_meant_for_another_process_is_ignored(
    pg: AppDb, backend: Backend, email_sync: EmailSync, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    pg.add_users(3)
    email_sync.configure(pg, backend)

    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid())}
    result = email_sync.subprocess("run", env=env)

    assert result.code == 0
    assert not any("WATCHDOG=1" in d for d in received(receiver))


def test_timeouts_that_cannot_fit_the_watchdog_are_refused_with_78(
    pg: AppDb, backend: Backend, email_sync: EmailSync, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    pg.add_users(1)
    email_sync.configure(pg, backend, backend={"call_timeout": "35s"})

    result = email_sync.subprocess("run", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})

    result.assert_one_clear_error(EXIT_CONFIG, "WatchdogSec", "backend.call_timeout")
    assert backend.sync_calls() == []
    assert "READY=1" not in received(receiver)


def test_sigterm_sends_stopping(
    pg: AppDb, backend: Backend, email_sync: EmailSync, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    pg.add_users(8)
    backend.set_default(Behaviour(delay=1.0))
    email_sync.configure(pg, backend, backend={"concurrency": 2})
    process = email_sync.popen("run", env={"NOTIFY_SOCKET": path})
    assert backend.wait_for_sync_calls(2, timeout=30)

    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)

    assert process.returncode == 0
    assert "STOPPING=1" in received(receiver)
