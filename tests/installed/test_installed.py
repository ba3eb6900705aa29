"""The installed package, feature by feature, on every supported Debian release (one container per release).

The tests of a release run in this file's order against one booted container, each building on the state the one
before left (the install, then the first timer run, then the upgrade, ..., then the purge): they tell the story of
one installation, from `apt install` to `apt purge`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import make_url

from emailsync import SCHEMA_VERSION
from harness.backend import Behaviour
from tests import scripts
from tests.installed.conftest import TOKEN, USERS, Installed, deb_field, fast_backend
from tests.nspawn import log

pytestmark = pytest.mark.timeout(900)

UNIT = "email-sync.service"
TIMER = "email-sync.timer"
CREDENTIAL_NOISE = "Couldn't read inherited credential"
CATCH_UP = 50_000  # due users of one run: more lines than journald's burst if each had its own
JOURNALD_INTERVAL = 30  # seconds: journald.conf's RateLimitIntervalSec= default
ALERT_TEMPLATE = "email-sync-alert@.service"
STREAK_FILE = "/var/lib/private/email-sync/failure-streak.json"  # StateDirectory= under DynamicUser=
CONFIG = "/etc/email-sync/email-sync.toml"
EXAMPLE = "/usr/share/doc/email-sync/examples/email-sync.toml"
RULES = "/usr/share/email-sync/prometheus/email-sync.rules.yml"
RULE_TESTS = Path(__file__).parents[1] / "prometheus" / "email-sync.rules.test.yml"
SOURCE_RULES = "../../packaging/prometheus/email-sync.rules.yml"  # what the tests in the source tree read


def test_readme_installs_the_previous_version_from_the_signed_repository(installed: Installed) -> None:
    c = installed.container
    assert installed.version() == deb_field(installed.fixture_deb, "Version")
    policy = c.run("apt-cache", "policy", "email-sync").stdout
    assert installed.repository.url in policy, policy
    # Only Debian's packages besides ours: the interpreter is the release's own.
    python = deb_field(installed.fixture_deb, "Depends")
    assert re.search(r"python3\.\d+ \(>= ", python), python
    # The signature is checked: with another key in Signed-By, apt refuses the repository.
    keyring = c.path("/etc/apt/keyrings/email-sync-archive-keyring.gpg")
    good = keyring.read_bytes()
    try:
        keyring.write_bytes(b"")
        refused = c.run("apt-get", "update", check=False, timeout=120).stderr
        # bookworm's gpgv says NO_PUBKEY, trixie's sqv "Missing key"; either way apt keeps the repository out.
        assert installed.repository.url in refused and ("NO_PUBKEY" in refused or "Missing key" in refused), refused
        assert "The repository is not updated" in refused or "is not signed" in refused, refused
    finally:
        keyring.write_bytes(good)
    c.run("apt-get", "update", timeout=120)


def test_the_configuration_is_written_once_from_the_starter_and_is_the_admins_not_a_conffile(
    installed: Installed,
) -> None:
    """postinst wrote /etc/email-sync/email-sync.toml from `email-sync config --starter` (the README's editor then
    set base_url and the webhook). dpkg does not own it: no upgrade changes it or asks about it. Every key is in the
    example, the installed release's `email-sync config --sample`."""
    c = installed.container
    assert c.run("dpkg-query", "-W", "-f=${Conffiles}", "email-sync").stdout.strip() == ""
    assert c.run("dpkg", "-S", CONFIG, check=False).returncode == 1  # no package owns it
    written = c.path(CONFIG).read_text()
    assert re.findall(r"(?m)^(\w+) = ", written) == ["base_url", "webhook_url"]
    assert (
        re.sub(r"(?m)^(base_url|webhook_url) = .*$", r'#\1 = ""', written)
        == c.run("email-sync", "config", "--starter").stdout
    )
    assert c.path(EXAMPLE).read_text() == c.run("email-sync", "config", "--sample").stdout


def test_check_before_enable_says_all_is_well_including_the_watchdog(installed: Installed) -> None:
    # The README ran `email-sync check` before `systemctl enable`; run it in that state once more to read it.
    c = installed.container
    c.run("systemctl", "disable", "--now", TIMER)
    try:
        done = c.run("email-sync", "check", check=False)
    finally:
        c.run("systemctl", "enable", TIMER)  # not --now: the timer's first run is the next test's
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    # ✔, or ! (advice) with its "fix:" line
    assert all(line.startswith(("✔", "!", "fix:")) for line in lines), done.stdout
    watchdog = [line for line in lines if "watchdog" in line]
    assert watchdog and "WatchdogSec=150s" in watchdog[0], watchdog


def test_the_timer_starts_a_cycle_that_syncs_everyone_with_the_credentials_from_credstore(installed: Installed) -> None:
    # The installed timer spreads each start over a fresh random 0-30 s (the fleet's hosts drift apart).
    assert installed.unit(TIMER, "RandomizedDelayUSec") == {"RandomizedDelayUSec": "30s"}
    installed.container.run("systemctl", "start", TIMER)
    state = installed.wait_finished()
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert installed.database.synced() == USERS
    calls = installed.backend.sync_calls()
    # The token reached the service only through /etc/credstore (LoadCredential=); the database URL too.
    assert len(calls) == USERS and {call.header("Authorization") for call in calls} == {f"Bearer {TOKEN}"}
    assert all(TOKEN not in str(entry.get("MESSAGE")) for entry in installed.container.journal())


def test_the_journal_has_json_entries_with_email_sync_fields(installed: Installed) -> None:
    entries = installed.container.journal("-u", UNIT, "EMAIL_SYNC_EVENT=cycle_finished")
    assert entries
    for entry in entries:
        event = json.loads(entry["MESSAGE"])
        assert event["event"] == "cycle_finished" and event["run_id"] == entry["EMAIL_SYNC_RUN_ID"]
        assert (entry["SYSLOG_IDENTIFIER"], entry["PRIORITY"]) == ("email-sync", "6")
    assert sum(json.loads(entry["MESSAGE"])["synced"] for entry in entries) == USERS
    # At the default level a success has no line of its own: a catch-up run's would overrun journald's rate limit.
    assert installed.container.journal("-u", UNIT, "EMAIL_SYNC_EVENT=user_synced") == []


def test_status_as_root(installed: Installed) -> None:
    done = installed.container.run("email-sync", "status", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "email-sync: healthy" in done.stdout and "timer: active" in done.stdout, done.stdout


def test_debians_node_exporter_serves_the_metrics_of_a_run_with_no_configuration(installed: Installed) -> None:
    # The package's metrics place (metrics.textfile's default, tmpfiles.d, the email-sync-metrics group) and its
    # link in node_exporter's default textfile directory: nothing to configure, no drop-in.
    c = installed.container
    c.sh("apt-get install --no-install-recommends prometheus-node-exporter", timeout=300)
    state = start_and_wait(installed)
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state

    def scraped() -> str | None:
        done = c.run("curl", "-fsS", "http://localhost:9100/metrics", check=False, timeout=30)
        return done.stdout if done.returncode == 0 else None

    metrics: str = c.wait_for("node_exporter on localhost:9100", scraped, timeout=60, interval=1)
    version = deb_field(installed.fixture_deb, "Version").split("-")[0]
    assert re.search(rf'^email_sync_build_info{{schema="\d+",version="{re.escape(version)}"}} 1', metrics, re.M), [
        line for line in metrics.splitlines() if "email_sync_build_info" in line
    ]
    assert re.search(r"^email_sync_last_run_success 1", metrics, re.M), metrics
    assert re.search(r"^email_sync_run_in_progress 0", metrics, re.M), metrics
    assert re.search(r"^email_sync_database_up 1", metrics, re.M), metrics
    # node_exporter read the file without error, through the link (1.5 names it by file name, 1.7+ by path).
    assert re.search(r"^node_textfile_scrape_error 0", metrics, re.M), metrics
    assert re.search(
        r'^node_textfile_mtime_seconds{file="(/var/lib/prometheus/node-exporter/)?email-sync\.prom"}', metrics, re.M
    ), [line for line in metrics.splitlines() if line.startswith("node_textfile")]


def test_the_shipped_alerting_rules_pass_their_promtool_tests(installed: Installed, tmp_path: Path) -> None:
    """The rules at the path docs/operations.md gives are the ones tests/prometheus proves: promtool (Debian's, on the
    host, as `make test` installs it) runs their unit tests on the installed copy."""
    shipped = tmp_path / "email-sync.rules.yml"
    shipped.write_text(installed.container.run("cat", RULES).stdout)
    suite = RULE_TESTS.read_text()
    assert SOURCE_RULES in suite
    (tmp_path / "email-sync.rules.test.yml").write_text(suite.replace(SOURCE_RULES, str(shipped)))
    promtool = shutil.which("promtool")
    assert promtool, "no promtool on the host: `make system-deps` installs Debian's prometheus"

    tested = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "email-sync.rules.test.yml")], capture_output=True, text=True
    )

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_a_pause_typed_on_the_host_holds_the_services_runs_until_resume(installed: Installed) -> None:
    c = installed.container
    synced = installed.database.synced()
    installed.database.add_users(3)
    c.run("email-sync", "pause", "--reason", "backend maintenance")

    state = start_and_wait(installed)
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert installed.database.synced() == synced, "a run of a paused fleet synced someone"
    status = c.run("email-sync", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "fleet: paused by root@" in status.stdout and "backend maintenance" in status.stdout, status.stdout
    assert "a run would claim 0" in c.run("email-sync", "run", "--dry-run").stdout

    c.run("email-sync", "resume")
    state = start_and_wait(installed)
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert installed.database.synced() == synced + 3


def start_and_wait(installed: Installed, timeout: float = 180) -> dict[str, str]:
    installed.container.run("systemctl", "start", UNIT)
    return installed.wait_finished(installed.unit(UNIT, "InvocationID")["InvocationID"], timeout)


def test_a_catch_up_run_of_50000_users_keeps_its_lines_in_the_journal(installed: Installed) -> None:
    """journald keeps RateLimitBurst= lines of a unit per RateLimitIntervalSec= and priority (10,000 per 30 s by
    default, more with free disk space): a run must log far fewer, so cycle_finished is never the line dropped."""
    c = installed.container
    synced = installed.database.synced()
    installed.database.add_users(CATCH_UP)
    cursor = c.cursor()
    with fast_backend() as base_url:
        installed.dropin("fast-backend", f"[Service]\nEnvironment=EMAIL_SYNC_BACKEND_BASE_URL={base_url}\n")
        try:
            began = time.monotonic()
            state = start_and_wait(installed, timeout=600)
        finally:
            installed.remove_dropin("fast-backend")
    log(f"{installed.suite}: {CATCH_UP} users synced in one run in {time.monotonic() - began:.0f} s")
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert installed.database.synced() == synced + CATCH_UP

    finishes = c.journal("-u", UNIT, "EMAIL_SYNC_EVENT=cycle_finished", after=cursor)
    [finished] = [event for event in (json.loads(e["MESSAGE"]) for e in finishes) if event["synced"] > 0]
    assert (finished["outcome"], finished["synced"]) == ("ok", CATCH_UP), finished
    lines = c.journal("-u", UNIT, f"EMAIL_SYNC_RUN_ID={finished['run_id']}")
    events = [json.loads(e["MESSAGE"])["event"] for e in lines]
    assert events.count("cycle_started") == 1 and events[-1] == "cycle_finished", events
    assert "user_synced" not in events and len(events) < 100, Counter(events)
    # journald counts each priority apart: the run used one, info, which the next run's lines use too.
    assert {e["PRIORITY"] for e in lines} == {"6"}, Counter(e["PRIORITY"] for e in lines)

    # journald says what it dropped only when the unit's next line of that priority comes after the interval:
    # wait it out, then one more run (nobody is due) logs at info.
    time.sleep(max(0.0, began + JOURNALD_INTERVAL + 1 - time.monotonic()))
    state = start_and_wait(installed)
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    suppressed = [e["MESSAGE"] for e in c.journal(after=cursor) if "Suppressed" in str(e.get("MESSAGE"))]
    assert suppressed == [], suppressed


def test_apt_upgrade_stops_a_running_cycle_cleanly_and_the_timers_next_run_syncs_the_rest(installed: Installed) -> None:
    """The upgrade stops a running cycle before dpkg replaces the files it runs from, as systemd stops a run: the
    calls in flight finish and are recorded, the other claims are released, and the run ends "interrupted" (exit 0,
    no alert). The timer keeps its state and its schedule, and its next run, of the new release, syncs the rest."""
    c = installed.container
    # 10 waves of 8 calls (backend.concurrency) of 20 s each (within read_timeout, 30 s, and shutdown_grace, 20 s):
    # the cycle would run for minutes, far longer than the upgrade.
    synced = installed.database.synced()
    first = int(installed.database.scalar("SELECT max(id) FROM users")) + 1
    installed.database.add_users(80)
    installed.backend.latency = 20.0
    c.run("systemctl", "start", UNIT)
    running = installed.unit(UNIT, "InvocationID", "ActiveState")
    assert running["ActiveState"] == "active"
    installed.repository.publish(installed.fixture_deb, installed.current_deb)
    config = c.path(CONFIG).read_bytes()
    log(f"{installed.suite}: apt update && apt upgrade during the cycle {running['InvocationID']}")
    try:
        c.sh("apt update && apt upgrade", timeout=600)
    finally:
        installed.backend.latency = 0.0
    assert installed.version() == deb_field(installed.current_deb, "Version")
    assert c.path(CONFIG).read_bytes() == config
    state = installed.wait_finished(running["InvocationID"], timeout=5)  # over when apt returned
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    outcome = installed.database.scalar("SELECT outcome FROM email_sync_runs ORDER BY started_at DESC LIMIT 1")
    assert outcome == "interrupted"
    assert 0 < installed.database.synced() - synced < 80, "the calls in flight were not recorded, or not stopped"

    state = start_and_wait(installed)  # the timer's next run, now

    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert installed.database.synced() == synced + 80
    calls = Counter(str(call.user_id) for call in installed.backend.sync_calls())
    assert [calls[str(user)] for user in range(first, first + 80)] == [1] * 80, "a user synced twice, or never"
    assert installed.webhook.sync_calls() == [], "the upgrade alerted"
    timer = installed.unit(TIMER, "UnitFileState", "ActiveState", "NextElapseUSecMonotonic")
    assert (timer["UnitFileState"], timer["ActiveState"]) == ("enabled", "active"), timer
    assert timer["NextElapseUSecMonotonic"] not in ("", "0", "infinity"), f"the timer has no next run: {timer}"


def test_answers_a_backend_should_not_send_fail_only_their_user_in_the_installed_run(installed: Installed) -> None:
    """A length of thousands of digits is that user's failure; a 2xx body too deep to parse is a sync whose count
    is unknown; the other users are synced, the run ends 0 and nothing in the journal is a traceback."""
    c = installed.container
    first = int(installed.database.scalar("SELECT coalesce(max(id), 0) FROM users")) + 1
    installed.database.add_users(3)
    endless = b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    installed.backend.script(first, Behaviour(raw=endless))
    installed.backend.script(first + 1, Behaviour(body=b"[" * 60_000 + b"]" * 60_000))
    cursor = c.cursor()

    state = start_and_wait(installed)

    installed.backend.script(first)
    installed.backend.script(first + 1)
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    synced = f"SELECT id FROM users WHERE id >= {first} AND last_sync IS NOT NULL ORDER BY id"
    with installed.database.engine.begin() as connection:
        assert [row[0] for row in connection.exec_driver_sql(synced)] == [first + 1, first + 2]
    messages = [str(entry.get("MESSAGE")) for entry in c.journal("-u", UNIT, after=cursor)]
    assert not [line for line in messages if "Traceback" in line], messages
    # The failed user out of later tests' way (its backoff would end in one of their runs), and this test's starts
    # out of systemd's start limit for them.
    c.run("email-sync", "reset", str(first))
    installed.database.execute(f"UPDATE users SET last_sync = now() WHERE id = {first}")
    c.run("systemctl", "reset-failed", UNIT)


def test_a_host_list_finds_the_server_and_load_balance_hosts_needs_the_releases_libpq_16(installed: Installed) -> None:
    """The package's psycopg2 is linked against its release's libpq5: 15 on Debian 12 (no load_balance_hosts, one
    78 line naming it), 17 on Debian 13. A host that refuses connections comes first in each list."""
    c = installed.container
    url = make_url(installed.database.url)
    user = quote(url.username or "postgres", safe="") + (f":{quote(url.password, safe='')}" if url.password else "")
    host, port = url.host or "127.0.0.1", url.port or 5432
    listed = f"postgresql://{user}@127.0.0.1:9,{host}:{port}/{url.database}?target_session_attrs=read-write"
    conninfo = f"host=127.0.0.1,{host} port=9,{port} user={url.username} dbname={url.database}"
    if url.password:
        conninfo += f" password='{url.password}'"
    for form in (listed, conninfo):
        done = c.run("email-sync", "run", "--dry-run", check=False, env={"EMAIL_SYNC_DATABASE_URL": form})
        assert done.returncode == 0 and "a run would claim" in done.stdout, done.stdout + done.stderr

    balanced = c.run(
        "email-sync",
        "run",
        "--dry-run",
        check=False,
        env={"EMAIL_SYNC_DATABASE_URL": listed + "&load_balance_hosts=random"},
    )

    libpq = int(c.run("dpkg-query", "-W", "-f=${Version}", "libpq5").stdout.split(".")[0])
    if libpq >= 16:
        assert balanced.returncode == 0, balanced.stdout + balanced.stderr
    else:
        assert balanced.returncode == 78, balanced.stdout + balanced.stderr
        assert f"load_balance_hosts needs libpq 16 or later (this one is {libpq}." in balanced.stdout
        assert "Traceback" not in balanced.stdout + balanced.stderr


def test_the_services_first_run_after_an_upgrade_with_a_schema_step_applies_it_with_nobody_typing_migrate(
    installed: Installed,
) -> None:
    """The upgrade above kept the schema (its fixture is this tree as an older version): the database is put back as
    the release before this one's step left it, then the timer's service runs as it would after `apt upgrade`."""
    c, database = installed.container, installed.database
    database.execute("ALTER TABLE email_sync_runs DROP COLUMN release")
    database.execute(f"DELETE FROM email_sync_schema WHERE version = {SCHEMA_VERSION}")
    database.execute("UPDATE users SET last_sync = NULL WHERE id = 3")
    synced, cursor = database.synced(), c.cursor()

    state = start_and_wait(installed)

    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert database.scalar("SELECT max(version) FROM email_sync_schema") == SCHEMA_VERSION
    assert database.synced() == synced + 1
    [migrated] = [json.loads(e["MESSAGE"]) for e in c.journal("EMAIL_SYNC_EVENT=schema_migrated", after=cursor)]
    assert (migrated["from_version"], migrated["to_version"]) == (SCHEMA_VERSION - 1, SCHEMA_VERSION), migrated
    version = c.run("email-sync", "--version").stdout.strip()
    assert version.endswith(f"(database schema v{SCHEMA_VERSION})"), version


def test_a_host_older_than_the_schema_stands_aside_without_failing_its_unit_and_status_names_it(
    installed: Installed,
) -> None:
    c, database = installed.container, installed.database
    newer = SCHEMA_VERSION + 1
    database.execute(f"INSERT INTO email_sync_schema (version, applied_at) VALUES ({newer}, now())")  # another host's
    database.execute("UPDATE users SET last_sync = NULL WHERE id = 4")
    synced, cursor = database.synced(), c.cursor()
    try:
        state = start_and_wait(installed)
        status = c.run("email-sync", "status", "--json", check=False)
    finally:
        database.execute(f"DELETE FROM email_sync_schema WHERE version = {newer}")

    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert database.synced() == synced  # user 4 waits for an upgraded host
    [warning] = [json.loads(e["MESSAGE"]) for e in c.journal("EMAIL_SYNC_EVENT=awaiting_upgrade", after=cursor)]
    assert (warning["schema_known"], warning["schema_found"]) == (SCHEMA_VERSION, newer), warning
    assert status.returncode == 0, status.stdout + status.stderr
    awaiting = json.loads(status.stdout)["awaiting_upgrade"]
    assert [host["release"] for host in awaiting] == [deb_field(installed.current_deb, "Version").split("-")[0]]
    assert installed.webhook.sync_calls() == [], "standing aside alerted"


def test_the_watchdog_kills_a_hung_run_and_the_failed_run_alerts_the_webhook(installed: Installed) -> None:
    """Every call has its deadline (backend.call_timeout), so no answer can hang a run any more: the watchdog is
    the guard against whatever else could. The hang here is the deepest there is: the process frozen (SIGSTOP)
    right after READY=1, mid-call. It pings no more; systemd's watchdog aborts it, then kills it (the abort signal
    waits on a frozen process, so TimeoutAbortSec= is short). The run records nothing; the alert unit records the
    kill in the failure streak (alert.after = 1 here: one kill alerts), and the next run, which succeeds, reads the
    same state directory and sends the "resolved". It syncs the user whose call the kill cut short again, once its
    lease has run out, with the Idempotency-Key of that call: the backend can tell it is the same piece of work."""
    # Calls that fit a 10 s watchdog: call_timeout + retry_backoff_max = 4.5 s < 10 s / 2.
    installed.dropin(
        "hang",
        "[Service]\nWatchdogSec=10s\nTimeoutAbortSec=5s\n"
        "Environment=EMAIL_SYNC_BACKEND_CONNECT_TIMEOUT=1s EMAIL_SYNC_BACKEND_READ_TIMEOUT=3s"
        " EMAIL_SYNC_BACKEND_CALL_TIMEOUT=4s EMAIL_SYNC_BACKEND_RETRY_BACKOFF_MAX=500ms EMAIL_SYNC_BACKEND_RETRIES=0"
        " EMAIL_SYNC_SYNC_LEASE=10s\n",
    )
    alert_dropin = f"/etc/systemd/system/{ALERT_TEMPLATE}.d/after.conf"
    installed.container.write(alert_dropin, "[Service]\nEnvironment=EMAIL_SYNC_ALERT_AFTER=1\n")
    installed.container.run("systemctl", "daemon-reload")
    installed.container.run("systemctl", "reset-failed", UNIT)  # the earlier tests' quick starts: no start limit here
    installed.container.path(STREAK_FILE).unlink(missing_ok=True)
    installed.database.execute("UPDATE users SET last_sync = NULL WHERE id = 1")
    earlier = len(installed.backend.sync_calls())
    installed.backend.set_default(Behaviour(delay=30))
    try:
        installed.container.run("systemctl", "start", UNIT)  # returns at READY=1: the watchdog is armed
        assert installed.backend.wait_for_sync_calls(earlier + 1), "the run made no call to be frozen in"
        installed.container.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT)
        state = installed.wait_finished(timeout=60)
        assert (state["Result"], state["ActiveState"]) == ("watchdog", "failed"), state
        assert installed.webhook.wait_for_sync_calls(1, timeout=60), "the OnFailure alert never reached the webhook"
    finally:
        installed.backend.set_default(Behaviour())
        installed.remove_dropin("hang")
    live = "SELECT count(*) FROM email_sync_user_state WHERE user_id = '1' AND lease_until > now()"
    installed.container.wait_for("the killed run's lease to run out", lambda: installed.database.scalar(live) == 0, 30)
    installed.container.run("systemctl", "start", UNIT)  # waits for the alert unit still at work (After=)
    again = installed.wait_finished()
    assert (again["Result"], again["ExecMainStatus"]) == ("success", "0"), again
    assert installed.webhook.wait_for_sync_calls(2, timeout=30), "the run that succeeded sent no resolved"
    installed.container.path(alert_dropin).unlink()
    installed.container.run("systemctl", "daemon-reload")
    alert, resolved = [call.json for call in installed.webhook.sync_calls()]
    assert (alert["unit"], alert["result"], alert["invocation_id"]) == (UNIT, "watchdog", state["InvocationID"]), alert
    assert (alert["event"], alert["streak"]["runs"]) == ("failing", 1), alert
    assert (resolved["event"], resolved["streak"]["first_error"]) == ("resolved", alert["streak"]["first_error"])
    ran = installed.unit(f"email-sync-alert@{UNIT}.service", "Result", "ExecMainStatus")
    assert (ran["Result"], ran["ExecMainStatus"]) == ("success", "0"), ran
    cut_short, resent = [call for call in installed.backend.sync_calls()[earlier:] if str(call.user_id) == "1"]
    assert resent.status == 200
    assert resent.header("Idempotency-Key") == cut_short.header("Idempotency-Key") is not None


def test_an_absent_optional_token_costs_no_log_line(installed: Installed) -> None:
    c = installed.container
    c.path("/etc/credstore/email-sync.backend-token").unlink()
    installed.backend.token = None
    cursor = c.cursor()
    installed.database.execute("UPDATE users SET last_sync = NULL WHERE id = 2")
    c.run("systemctl", "start", UNIT)
    state = installed.wait_finished()
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    said = [str(entry.get("MESSAGE")) for entry in c.journal(after=cursor)]
    assert not [line for line in said if CREDENTIAL_NOISE in line or "backend-token" in line], said


def test_every_unit_a_shipped_unit_names_is_known_to_this_releases_systemd(installed: Installed) -> None:
    unit_refs = scripts.load("unit_refs.py")
    files = installed.container.run("dpkg", "-L", "email-sync").stdout.split()
    units = {
        f.rsplit("/", 1)[1]: f for f in files if re.fullmatch(r"/usr/lib/systemd/system/[^/]+\.(service|timer)", f)
    }
    assert set(units) == {"email-sync.service", "email-sync.timer", "email-sync-alert@.service"}, units
    for name, path in units.items():
        for ref in unit_refs.references(name, installed.container.path(path).read_text()):
            loadable = ref.replace("@.", f"@{UNIT}.") if "@." in ref else ref
            state = installed.unit(loadable, "LoadState")["LoadState"]
            assert state == "loaded", f"{name} names {ref}: LoadState={state} on {installed.suite}"


def test_apt_purge_leaves_nothing(installed: Installed) -> None:
    c = installed.container
    c.sh("apt purge email-sync", timeout=300)
    assert c.run("dpkg", "-s", "email-sync", check=False).returncode != 0
    leftovers = c.sh(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /var/lib/apt/lists -o -path /var/cache/apt \\) -prune"
        " -o -name '*email-sync*' -print",
        check=False,
    ).stdout.split()
    # The administrator's own repository configuration stays, as for any third-party repository.
    admins = {"/etc/apt/sources.list.d/email-sync.sources", "/etc/apt/keyrings/email-sync-archive-keyring.gpg"}
    assert set(leftovers) - admins == set(), leftovers
    for path in ("/etc/credstore", "/var/lib/private/email-sync", "/usr/bin/email-sync"):
        assert not c.path(path).exists(), path
