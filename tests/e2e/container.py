"""A clean Debian 12 container with systemd as PID 1, and what it takes to install email-sync into it.

The root filesystem is made once by debootstrap (from the apt mirror the host uses) and cached; every test session
boots a fresh copy of it with systemd-nspawn (tests/nspawn.py drives it, shared with tests/installed), and runs
commands inside with nsenter. Python packages come from a
wheelhouse built on the host from requirements.lock (HTTPS to PyPI does not work inside the container), bound in
read-only, and installed with --no-index --require-hashes: the same offline, hash-checked install a .deb build does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.nspawn import SetupError, children, log, run_host

CACHE = Path(os.environ.get("EMAIL_SYNC_E2E_CACHE", "/var/cache/email-sync-e2e"))
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
VENV = "/usr/lib/email-sync/venv"
WHEELHOUSE = "/wheelhouse"  # where the wheelhouse is bound inside the container
PROJECT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Two sessions on one machine must not build the same cache entry at once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- host prerequisites ----------------------------------------------------------------------------------------


def ensure_host_tools() -> None:
    """debootstrap and systemd-nspawn, installed from Debian's archive when missing."""
    if shutil.which("debootstrap") and shutil.which("systemd-nspawn") and shutil.which("nsenter"):
        return
    log("installing debootstrap and systemd-container")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_host(["apt-get", "update", "-q"], timeout=300, env=env)
    run_host(["apt-get", "install", "-y", "-q", "debootstrap", "systemd-container"], timeout=600, env=env)


def host_mirror() -> str:
    """The Debian mirror this host's apt uses for the suite (so debootstrap needs no other network)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            enabled = fields.get("Enabled", "yes").lower() != "no" and "deb" in fields.get("Types", "").split()
            if enabled and SUITE in suites and "main" in fields.get("Components", "").split():
                for uri in fields.get("URIs", "").split():
                    if uri.startswith("http"):
                        return uri.rstrip("/")
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))] if sources.is_dir() else []
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
            if match and match[2] == SUITE and "main" in match[3].split() and match[1].startswith("http"):
                return match[1].rstrip("/")
    return FALLBACK_MIRROR


# -- the cached root filesystem ---------------------------------------------------------------------------------


def pristine_rootfs() -> Path:
    """The debootstrapped Debian root, built once (~1.5 min) and reused. Never boot it: boot a copy."""
    key = hashlib.sha256(f"{SUITE} {VARIANT} {','.join(PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"rootfs-{SUITE}-{key}"
    done = CACHE / f"rootfs-{SUITE}-{key}.complete"
    with cache_lock():
        if done.exists() and root.is_dir():
            return root
        ensure_host_tools()
        shutil.rmtree(root, ignore_errors=True)
        building = CACHE / f"{root.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        mirror = host_mirror()
        log(f"debootstrap {SUITE} from {mirror} into {root} (first run only, ~1-2 min)")
        started = time.monotonic()
        run_host(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(building),
                mirror,
            ],
            timeout=900,
        )
        building.rename(root)
        done.write_text(f"{mirror} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        log(f"rootfs ready in {time.monotonic() - started:.0f}s")
        return root


# -- the wheelhouse --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip(*args: str, timeout: float = 600) -> None:
    run_host(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        timeout=timeout,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )


def dependency_wheelhouse(lock: Path) -> Path:
    """Wheels for every pinned dependency, cached per lock file, plus a copy of the lock that also accepts the
    wheels built here from hash-checked sdists (sdnotify is an sdist only)."""
    key = _sha256(lock)[:16]
    wheelhouse = CACHE / f"wheels-{key}"
    done = CACHE / f"wheels-{key}.complete"
    with cache_lock():
        if done.exists() and wheelhouse.is_dir():
            return wheelhouse
        shutil.rmtree(wheelhouse, ignore_errors=True)
        log(f"building the wheelhouse for {lock.name} in {wheelhouse}")
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            downloads = Path(scratch) / "downloads"
            # The host is Debian 12 with CPython 3.11 on the same architecture as the container, so what pip
            # picks for the host is what the container needs; --require-hashes checks every file against the lock.
            _pip("download", "--require-hashes", "--no-deps", "-r", str(lock), "-d", str(downloads))
            built = Path(scratch) / "wheels"
            built.mkdir()
            extra_hashes: dict[str, list[str]] = {}
            for path in sorted(downloads.iterdir()):
                if path.suffix == ".whl":
                    shutil.copy2(path, built / path.name)
                    continue
                # An sdist, already checked against the lock: build its wheel here, where the tools are.
                before = set(built.iterdir())
                _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(built), str(path))
                for wheel in set(built.iterdir()) - before:
                    name = re.split(r"-\d", wheel.name, maxsplit=1)[0].lower().replace("_", "-")
                    extra_hashes.setdefault(name, []).append(_sha256(wheel))
            text = lock.read_text()
            for name, hashes in extra_hashes.items():
                pattern = re.compile(rf"^({re.escape(name)}==\S+ \\\n)", re.M | re.I)
                added = "".join(f"    --hash=sha256:{digest} \\\n" for digest in hashes)
                text, count = pattern.subn(lambda m, added=added: m[1] + added, text)
                if count != 1:
                    raise SetupError(f"cannot find the pin of {name} in {lock}")
            (built / "requirements.lock").write_text(text)
            built.rename(wheelhouse)
        done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        return wheelhouse


def email_sync_wheel(out: Path) -> Path:
    """A wheel of the working tree's email-sync (or of $EMAIL_SYNC_E2E_SOURCE, another checkout), built from a
    copy so nothing lands in the source tree."""
    project = Path(os.environ.get("EMAIL_SYNC_E2E_SOURCE") or PROJECT)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(project / name, source / name)
        shutil.copytree(project / "emailsync", source / "emailsync", ignore=shutil.ignore_patterns("__pycache__"))
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(source), timeout=300)
    wheels = sorted(out.glob("email_sync-*.whl"))
    if len(wheels) != 1:
        raise SetupError(f"expected one email-sync wheel in {out}, found {wheels}")
    return wheels[0]


# -- the container ---------------------------------------------------------------------------------------------


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_sessions(drop_database: Callable[[str], None]) -> None:
    """Clean up after sessions that were killed before their finalizers ran (SIGKILL, a lost CI runner): stop
    their container, drop their database, remove their copy. Sessions whose pytest is still alive are left alone."""
    for session in sorted(CACHE.glob("session-*")):
        owner = _read_pid(session / "owner.pid")
        if owner and _alive(owner):
            continue
        log(f"reaping the stale session {session}")
        nspawn = _read_pid(session / "nspawn.pid")
        with contextlib.suppress(OSError):
            if nspawn and _alive(nspawn) and str(session) in Path(f"/proc/{nspawn}/cmdline").read_text():
                for pid in [*children(nspawn), nspawn]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _alive(nspawn) and time.monotonic() < deadline:
                    time.sleep(0.1)
        with contextlib.suppress(OSError):
            database = (session / "database").read_text().strip()
            if database:
                drop_database(database)
        shutil.rmtree(session, ignore_errors=True)
