"""A booted Debian container (systemd-nspawn -b, systemd as PID 1), driven from the host with nsenter.

Shared by the source-tree end-to-end tests (tests/e2e) and the installed-package suite (tests/installed): the
container is what they have in common; what goes into it (a venv from the tree, or the .deb from the repository)
is theirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONTAINER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class SetupError(RuntimeError):
    """The environment could not be set up (no container, no wheelhouse): a failure, never a skip."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_host(args: Sequence[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A host command that must succeed; its output goes into the error when it does not."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as error:
        raise SetupError(f"timed out after {timeout}s: {' '.join(args)}") from error
    if done.returncode != 0:
        raise SetupError(f"exit {done.returncode}: {' '.join(args)}\n{done.stdout}\n{done.stderr}")
    return done


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def own_cgroups() -> list[Path]:
    """This process's cgroup in each hierarchy systemd-nspawn places a container in: the unified one and, on a
    hybrid or legacy host, the named systemd one (as directories of their mounts)."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("", "name=systemd"):
            own[controllers] = path
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_fields, _, fs_fields = line.partition(" - ")
        root, mount_point = mount_fields.split()[3:5]
        fstype, _, options = fs_fields.split()[:3]
        if fstype == "cgroup2":
            hierarchy = ""
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            hierarchy = "name=systemd"
        else:
            continue
        relative = os.path.relpath(own.get(hierarchy, "/.."), root)
        if hierarchy not in found and not relative.startswith(".."):
            found[hierarchy] = Path(mount_point, relative)
    return list(found.values())


def remove_cgroup(path: Path) -> None:
    """Remove a cgroup and the ones below it (each an empty directory once its processes are gone)."""
    for directory, _, _ in os.walk(path, topdown=False):
        try:
            os.rmdir(directory)
        except OSError as error:
            log(f"could not remove the cgroup {directory}: {error}")


class Container:
    """A booted copy of the rootfs. ``run`` executes a command inside, as root, with a clean environment.

    Each container has a cgroup of its own. With --keep-unit (no systemd on the host to ask for a scope),
    systemd-nspawn puts the container's systemd in the cgroup "payload" below its own: containers started from one
    process would share that tree, and each one's systemd would remove the cgroups of units the others are
    starting (a start then fails with "Failed to spawn executor: No such file or directory", result 'resources').
    """

    def __init__(self, root: Path, log_path: Path, binds_ro: Sequence[tuple[Path, str]] = ()) -> None:
        self.root = root
        self.log_path = log_path
        self.binds_ro = list(binds_ro)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.cgroups: list[Path] = []

    def boot(self, timeout: float = 90) -> None:
        name = f"email-sync-test-{self.root.name}-{uuid.uuid4().hex[:8]}"
        self.cgroups = [parent / name for parent in own_cgroups()]
        for cgroup in self.cgroups:
            cgroup.mkdir()
        # systemd-nspawn is started in the new cgroups (its shell moves itself there, then execs it).
        args = ["sh", "-ec", 'while [ "$1" != -- ]; do echo $$ >"$1"; shift; done; shift; exec "$@"', "sh"]
        args += [str(cgroup / "cgroup.procs") for cgroup in self.cgroups] + ["--"]
        args += ["systemd-nspawn", "-D", str(self.root), "--register=no", "--keep-unit", "-b", "--console=passive"]
        args += [f"--bind-ro={source}:{target}" for source, target in self.binds_ro]
        with open(self.log_path, "wb") as out:
            self.nspawn = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        (self.log_path.parent / "nspawn.pid").write_text(f"{self.nspawn.pid}\n")  # for reap_stale_sessions
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.nspawn.poll() is not None:
                raise SetupError(f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise SetupError(f"no container init after {timeout}s:\n{self.console()}")
            found = children(self.nspawn.pid)
            self.leader = found[0] if found else 0
            time.sleep(0.05)
        state = ""
        while state not in ("running", "degraded"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SetupError(f"system state {state!r} after {timeout}s:\n{self.console()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=remaining).stdout
                state = state.strip()
            if state not in ("running", "degraded"):
                time.sleep(0.2)

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        if not self.leader:
            raise SetupError("container not booted")
        clean = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "TERM": "dumb"}
        command = ["nsenter", "-t", str(self.leader), "-a", "env", "-i"]
        command += [f"{name}={value}" for name, value in {**clean, **(env or {})}.items()]
        command += list(args)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as error:
            raise SetupError(f"timed out after {timeout}s in the container: {' '.join(args)}") from error
        if check and done.returncode != 0:
            raise SetupError(f"exit {done.returncode} in the container: {' '.join(args)}\n{done.stdout}\n{done.stderr}")
        return done

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-euc", script, check=check, timeout=timeout)

    def path(self, inside: str) -> Path:
        """Host path of a file on the container's disk (not for /run or /tmp, which are its own tmpfs)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        path = self.path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    # -- systemd helpers --

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        out = self.run("journalctl", "-n", "0", "--show-cursor", "--no-pager").stdout
        match = re.search(r"^-- cursor: (.+)$", out, re.M)
        return match[1].strip() if match else ""

    def journal(self, *matches: str, after: str = "") -> list[dict[str, Any]]:
        """Journal entries as parsed JSON (journalctl -o json), optionally after a cursor. With both, the entries
        that match and the entries after the cursor are read apart and intersected: journalctl 252 given a match
        and --after-cursor skips the first matching entry (it steps over the cursor's entry, assuming it matches)."""
        entries = self._journal(*matches)
        if not after:
            return entries
        later = {entry["__CURSOR"] for entry in self._journal(f"--after-cursor={after}")}
        return [entry for entry in entries if entry["__CURSOR"] in later]

    def _journal(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args, timeout=30).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_for(self, what: str, predicate: Any, timeout: float, interval: float = 0.2) -> Any:
        """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def poweroff(self, timeout: float = 30) -> None:
        """Shut the container down; kill it when it does not go in time. Safe to call twice."""
        nspawn = self.nspawn
        if nspawn is None:
            return
        if nspawn.poll() is None and self.leader:
            with contextlib.suppress(SetupError, OSError):
                self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
            try:
                nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                log("container did not power off in time: killing it")
                for pid in (self.leader, nspawn.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    nspawn.wait(10)
        for cgroup in self.cgroups:
            remove_cgroup(cgroup)
        self.nspawn = None
        self.leader = 0
