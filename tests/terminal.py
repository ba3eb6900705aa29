"""A command run in a pseudo-terminal of a given size, and its output as that terminal shows it."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path


def in_terminal(config: Path, *args: str, columns: int, rows: int = 50, timeout: float = 60) -> list[str]:
    """The lines an operator sees: email-sync's stdout is a terminal ``columns`` wide (no COLUMNS variable to go
    by, as in a login shell that exports none); the terminal's own CRLF line ends are read as line breaks."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "emailsync", "--config", str(config), *args],
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the command exited and closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    process.wait(timeout=timeout)
    return b"".join(chunks).decode().replace("\r\n", "\n").split("\n")
