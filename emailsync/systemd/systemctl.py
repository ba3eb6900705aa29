"""Asking the running systemd about our units: `systemctl show`, for `status` (the timer) and `check` (the
watchdog). Empty when systemd is not PID 1 here (a container build, a developer's shell)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def show(unit: str, *properties: str) -> dict[str, str]:
    """The unit's ``properties`` as systemd reports them; those it shows as empty or n/a are left out."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return {}
    result = subprocess.run(
        [systemctl, "show", unit, "-p", ",".join(properties)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return {}
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {name: value for name, value in fields.items() if value and value != "n/a"}
