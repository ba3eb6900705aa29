"""The console script's start-up: the garbage collector is off while the modules are imported, on for the work."""

from __future__ import annotations

import gc
import subprocess
import sys

from emailsync.commands import cli


def test_a_run_from_the_console_script_collects_what_its_work_makes() -> None:
    probe = (
        "import gc\n"
        "from emailsync.commands import cli\n"
        "gc.disable()  # as cli.entry does\n"
        "cli._start_up_done()\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_in_process_callers_keep_their_collector_as_it_was() -> None:
    frozen = gc.get_freeze_count()

    cli._start_up_done()

    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
