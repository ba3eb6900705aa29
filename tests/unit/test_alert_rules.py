"""The Prometheus alerting rules the package ships, proven by Debian's promtool: valid, every alert firing when its
input series say it should and silent when they say it should not, and thresholds that follow the shipped units."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from emailsync.systemd import timespan

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging/prometheus/email-sync.rules.yml"
RULE_TESTS = ROOT / "tests/prometheus/email-sync.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)


def unit_seconds(unit: str, key: str) -> float:
    match = re.search(rf"^{key}=(.+)$", (ROOT / "systemd" / unit).read_text(), re.M)
    assert match, f"{key}= in systemd/{unit}"
    return timespan.parse(match[1]) / timespan.USEC_PER_SEC


def alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M)


def expression(alert: str) -> str:
    rule = RULES.read_text().split(f"- alert: {alert}\n", 1)[1].split("- alert:", 1)[0]
    return rule.split("expr:", 1)[1].split("labels:", 1)[0]


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_every_alert_fires_and_stays_silent_as_its_input_series_say() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", RULE_TESTS.read_text())

    for alert in alerts():
        outcomes = {silent == "" for name, silent in cases if name == alert}
        assert outcomes == {True, False}, f"{alert}: {'firing' if True not in outcomes else 'silent'} case missing"


def test_the_run_thresholds_follow_the_shipped_units() -> None:
    timer = "email-sync.timer"
    tick = unit_seconds(timer, "OnUnitInactiveSec") + unit_seconds(timer, "RandomizedDelaySec")
    runtime_max = unit_seconds("email-sync.service", "RuntimeMaxSec")
    longest_life = runtime_max + unit_seconds("email-sync.service", "TimeoutStopSec")

    no_run = expression("EmailSyncNoRun")
    assert re.search(rf"> {3 * tick:g}\)\s+unless on \(instance, job\) \(email_sync_run_in_progress == 1\)", no_run)
    assert f"> {longest_life + tick:g})" in no_run
    nearing = expression("EmailSyncRunNearingRuntimeMax")
    assert nearing.count(f"> {0.8 * runtime_max:g}") == 2
