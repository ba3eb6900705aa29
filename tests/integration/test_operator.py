"""Operator commands: status, check, sync USER, users, reset, migrate --print-app-indexes. The tests of status and
check that tests/unit proves on SQLite run here again on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, make_url

from emailsync.commands import status
from emailsync.config import settings
from emailsync.errors import EXIT_NO, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE
from emailsync.model import Claim
from emailsync.store import db, schema, state
from emailsync.store.leases import Leases
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync
from tests.integration.conftest import ON_BOTH_DATABASES
from tests.terminal import in_terminal
from tests.unit.commands.test_check import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    test_check_under_auto_migration_passes_a_schema_behind_as_the_next_run_migrates_it,
)
from tests.unit.commands.test_status import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    add_run,
    test_status_and_users_before_migrate_exit_78_naming_migrate,
    test_status_and_users_on_an_older_schema_exit_78_naming_migrate,
    test_status_json_carries_the_24_hour_chart_columns,
)


@pytest.fixture
def after_a_run(pg: AppDb, backend: Backend, email_sync: EmailSync) -> AppDb:
    """Five users synced by one run, user 3 failed (in backoff), user 6 leased by another run."""
    pg.add_users(5)
    pg.add_users(1, start=6)
    backend.script(3, Behaviour(status=422, body=b'{"error": "mailbox locked"}'))
    email_sync.configure(pg, backend)
    assert email_sync("run").code == EXIT_OK
    pg.execute(
        f"UPDATE email_sync_user_state SET lease_owner = 'other-run', lease_until = {pg.at(600)} WHERE user_id = '6'"
    )
    return pg


def test_status_of_a_healthy_install_fits_80_columns_and_exits_0(after_a_run: AppDb, email_sync: EmailSync) -> None:
    result = email_sync("status")

    assert result.code == EXIT_OK, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("email-sync: healthy")
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "mailbox locked" in paragraphs(lines, "3 ")
    assert "in backoff: 1" in lines and "leased now: 1" in lines


@pytest.fixture
def after_a_long_failure(pg: AppDb, email_sync: EmailSync) -> str:
    """A run that found the backend unreachable, and user 3 in backoff with a long error; the problem's full text."""
    pg.add_users(2)
    pg.execute(
        "INSERT INTO email_sync_user_state (user_id, failures, next_attempt_at, last_error) "
        f"VALUES ('3', 2, {pg.at(600)}, :error)",
        error="HTTP 422 from the backend: the mailbox of this user is locked by another client; retry later " * 2,
    )
    email_sync.configure(pg, None)
    assert email_sync("run").code == EXIT_TEMPFAIL
    [run] = pg.runs()
    return f"the last run failed: {run.outcome}: {run.error}"


def paragraphs(lines: list[str], first: str) -> str:
    """The entry that starts with ``first``, its wrapped lines (indented deeper than it) joined again."""
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(first))
    indent = len(lines[start]) - len(lines[start].lstrip())
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent or not line.strip():
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


@pytest.mark.parametrize("columns", [80, 60, 132])
def test_status_in_a_terminal_wraps_a_long_cause_to_its_width_and_loses_none_of_it(
    after_a_long_failure: str, email_sync: EmailSync, columns: int
) -> None:
    lines = in_terminal(email_sync.config_path, "status", columns=columns)

    assert lines[0].startswith("email-sync: UNHEALTHY"), lines
    assert all(len(line) <= columns for line in lines), max(lines, key=len)
    assert paragraphs(lines, "! the last run failed") == "! " + " ".join(after_a_long_failure.split())
    backoff = paragraphs(lines, "3 ")
    assert backoff.endswith("is locked by another client; retry later"), backoff


def test_status_piped_wraps_at_80_columns(after_a_long_failure: str, email_sync: EmailSync) -> None:
    lines = email_sync("status").stdout.splitlines()

    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert paragraphs(lines, "! the last run failed") == "! " + " ".join(after_a_long_failure.split())


@ON_BOTH_DATABASES
def test_status_charts_the_last_24_hours_of_runs_in_one_line_as_the_terminal_shows_it(
    app_db: AppDb, email_sync: EmailSync
) -> None:
    """Half-hour columns, oldest left: the height is what was synced in it, a failed run marks it, a gap shows."""
    add_run(app_db, 23.75, 0)  # the oldest column: a run that found nobody due
    add_run(app_db, 2.25, 0, "backend_unavailable")
    add_run(app_db, 1.25, 30)
    add_run(app_db, 1.2, 20, host="host-b")  # two hosts' runs in one column add up
    add_run(app_db, 0.25, 100)
    add_run(app_db, 25, 5000)  # older than a day: not shown, and not the scale
    email_sync.configure(app_db, None)

    lines = in_terminal(email_sync.config_path, "status", columns=80)

    chart = "▁" + "·" * 42 + "✘" + "·" + "▅" + "·" + "█"
    assert f"last 24h  {chart} now" in lines, lines
    assert "          █ 100 synced in 30 min; ✘ a run failed; · no run" in lines


def test_status_json_carries_runs_backlog_backoff_and_leases(after_a_run: AppDb, email_sync: EmailSync) -> None:
    result = email_sync("status", "--json")

    report = json.loads(result.stdout)
    assert report["healthy"] is True and report["schema_version"] == schema.SCHEMA_VERSION
    assert (report["runs"][0]["synced"], report["runs"][0]["failed"], report["runs"][0]["outcome"]) == (5, 1, "ok")
    assert [user["user_id"] for user in report["backoff"]] == ["3"]
    assert [(user["user_id"], user["lease_owner"]) for user in report["leases"]] == [("6", "other-run")]
    assert report["due_now"] == 0  # 3 is in backoff, 6 is leased


def test_status_exits_2_when_the_last_run_failed(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(2)
    with Backend(sync_path="/elsewhere") as backend:
        email_sync.configure(pg, backend)
        email_sync("run")

    result = email_sync("status")

    assert result.code == EXIT_NO
    assert "the last run failed: endpoint_misconfigured" in result.stdout


def test_status_exits_2_when_no_run_succeeded_within_the_missed_intervals(
    after_a_run: AppDb, email_sync: EmailSync
) -> None:
    after_a_run.execute(f"UPDATE email_sync_runs SET finished_at = {after_a_run.at(-3600)}")

    result = email_sync("status")

    assert result.code == EXIT_NO
    assert "no successful run in the last 900s" in result.stdout


def test_status_reports_backlog_age_of_the_oldest_due_user(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1, age=5 * 3600)
    pg.add_users(1, age=2 * 3600, start=2)
    email_sync.configure(pg, backend)

    report = json.loads(email_sync("status", "--json").stdout)

    assert report["due_now"] == 2
    assert 5 * 3600 - 60 < report["oldest_due_age_s"] < 5 * 3600 + 60


def status_while_another_run_takes_a_lease(app: AppDb, email_sync: EmailSync) -> tuple[status.Status, list[str]]:
    """`status` read in-process while run-a holds user 1 and run-b commits its lease on user 2 between two of
    status's reads: after it counted the live leases, before it lists them. Returns the report, and the users the
    database holds leases on once it is done."""
    app.add_users(2)
    app.lease(1, "run-a", 600)
    email_sync.configure(app, None)
    config = settings.load(str(email_sync.config_path), {})
    count_of_live_leases = state.live_lease(db.dialect_of(app.engine), "")
    committed = []

    def run_b_takes_a_lease(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if count_of_live_leases in statement and not committed:
            app.lease(2, "run-b", 600)  # on a connection of its own, committed before status reads on
            committed.append(statement)

    with db.connected(config.database) as engine:
        event.listen(engine, "after_cursor_execute", run_b_takes_a_lease)
        report = status.gather(engine, config)
    assert committed, "status never counted the live leases"
    return report, app.leased()


def test_status_reads_one_snapshot_while_a_run_commits_between_its_reads(pg: AppDb, email_sync: EmailSync) -> None:
    report, leased_after = status_while_another_run_takes_a_lease(pg, email_sync)

    assert sorted(leased_after) == ["1", "2"]
    assert report.leased == 1
    assert [user.user_id for user in report.leases] == ["1"]


def test_check_passes_line_by_line_on_a_working_setup(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend)

    result = email_sync("check")

    assert result.code == EXIT_OK, result.stdout
    names = [line.split(":")[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert names[:3] == ["✔ config", "✔ interpreter", "✔ dependencies"]
    assert "✔ sync endpoint" in names and "✔ backend health" in names and "✔ database" in names
    assert backend.sync_calls() == []  # checking syncs nobody


def test_check_finds_a_wrong_sync_path_without_syncing_anyone(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(2)
    with Backend(sync_path="/api/v1/sync/start") as backend:  # the old loop's path, not the default
        email_sync.configure(pg, backend)
        result = email_sync("check")
        posts = [r for r in backend.requests() if r.method == "POST"]

    assert result.code == EXIT_NO
    assert "✘ sync endpoint: OPTIONS" in result.stdout and "404" in result.stdout
    assert "fix: set backend.sync_path" in result.stdout
    assert posts == [] and pg.synced_ids() == set()


def test_check_reports_every_configuration_error_then_checks_what_the_valid_keys_allow(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(pg, backend, sync={"interval": "soon"}, backend={"retries": "many"}, logging={"level": "x"})

    result = email_sync("check")

    assert result.code == EXIT_NO
    lines = result.stdout.splitlines()
    config = [line for line in lines if line.startswith("✘ config: ")]
    assert [line.split(" ")[3] for line in config] == ["backend.retries", "sync.interval", "logging.level"]
    assert all(str(email_sync.config_path) in line for line in config)
    marks = {line.split(":")[0][2:]: line[0] for line in lines if not line.startswith(" ")}
    assert (marks["interpreter"], marks["dependencies"], marks["database"], marks["fleet"]) == ("✔", "✔", "✔", "✔")
    assert (marks["backend health"], marks["sync endpoint"], marks["watchdog"]) == ("-", "-", "✔")
    assert "- backend health: not checked: fix backend.retries first" in lines
    assert backend.requests() == []


def test_check_flags_a_secret_file_readable_by_others(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("a-token-value")
    token.chmod(0o644)
    email_sync.configure(pg, backend, backend={"token_file": str(token)})

    result = email_sync("check")

    assert result.code == EXIT_NO
    assert "✘ secret backend.token_file" in result.stdout and f"chmod 0600 {token}" in result.stdout
    assert "a-token-value" not in result.stdout


def test_check_under_manual_migration_says_to_migrate_when_the_schema_is_missing(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.execute("DROP TABLE email_sync_schema")
    email_sync.configure(pg, backend, database={"migrate": "manual"})

    result = email_sync("check")

    assert result.code == EXIT_NO
    assert "✘ database" in result.stdout and "fix: run `email-sync migrate`" in result.stdout


NO_SUCH_DB = "no_such_db on the test server"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://app:s3cret@127.0.0.1:notaport/app", "would exit 78"),
        (NO_SUCH_DB, "would exit 78"),
        ("postgresql://app:s3cret@127.0.0.1:1/app", "would exit 75"),
    ],
)
def test_check_says_whether_a_database_failure_is_configuration_or_temporary(
    url: str, says: str, pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    if url == NO_SUCH_DB:
        url = make_url(pg.url).set(database="no_such_db").render_as_string(hide_password=False)
    email_sync.configure(pg, backend, database={"url": url})

    result = email_sync("check")

    assert result.code == EXIT_NO
    assert "✘ database" in result.stdout and says in result.stdout and "s3cret" not in result.stdout


def test_check_warns_until_the_printed_app_index_exists(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend)
    assert "! app index" in email_sync("check").stdout

    ddl = email_sync("migrate", "--print-app-indexes").stdout.strip()
    with pg.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(ddl)

    assert "✔ app index" in email_sync("check").stdout


def test_the_due_queries_use_indexes_at_a_million_users(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    """Reading a page of due users takes the printed app index; claiming them takes the app's primary key."""
    from sqlalchemy import bindparam, text

    from emailsync.config import settings
    from emailsync.store import db
    from emailsync.store.users import UsersTable

    pg.execute(
        "INSERT INTO users SELECT g, 'u' || g || '@example.com', now() - interval '10 minutes' "
        "FROM generate_series(1, 1000000) g"
    )
    pg.execute("UPDATE users SET last_sync = NULL WHERE id % 1000 = 0")
    email_sync.configure(pg, backend)
    with pg.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            email_sync("migrate", "--print-app-indexes").stdout.strip()
        )
    pg.execute("ANALYZE users")
    loaded = settings.load(str(email_sync.config_path), {})
    users = UsersTable(loaded.users, db.dialect_of(pg.engine))

    page_plan = "\n".join(row[0] for row in pg.rows(f"EXPLAIN {users.page_query}", interval=3600.0, limit=1000))
    with pg.engine.begin() as connection:
        lists = (bindparam("ids", expanding=True), bindparam("keys", expanding=True))
        claim = text(f"EXPLAIN {users.claim_query}").bindparams(*lists)
        rows = connection.execute(claim, {"interval": 3600.0, "ids": [7, 1000, 2000], "keys": ["7", "1000", "2000"]})
        claim_plan = "\n".join(row[0] for row in rows)

    assert "users_last_sync_email_sync_idx" in page_plan and db.STATE in page_plan, page_plan
    assert "users_pkey" in claim_plan and f"{db.STATE}_pkey" in claim_plan and "Seq Scan" not in claim_plan, claim_plan


def test_sync_user_by_id_or_email_ignores_interval_and_backoff(
    after_a_run: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.script(3)
    by_id = email_sync("sync", "3")
    by_email = email_sync("sync", "user1@example.com")

    assert (by_id.code, by_email.code) == (EXIT_OK, EXIT_OK)
    assert len(backend.sync_calls(3)) == 2 and len(backend.sync_calls(1)) == 2
    assert after_a_run.state(3).failures == 0
    assert by_id.event("user_synced")["user_id"] == 3


def test_sync_user_respects_a_live_lease(after_a_run: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    result = email_sync("sync", "6")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "being synced by a run")
    assert len(backend.sync_calls(6)) == 1  # the run's call only


def assert_ok(code: int) -> None:
    assert code == EXIT_OK


def before_the_lease(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """Let another process act between `sync USER` finding the user and leasing it."""
    lease = Leases.claim_user

    def late(leases: Leases, key: str) -> Claim | None:
        meanwhile()
        return lease(leases, key)

    monkeypatch.setattr(Leases, "claim_user", late)


def test_sync_user_after_a_run_synced_that_user_meanwhile_is_new_work_with_a_new_idempotency_key(
    pg: AppDb, backend: Backend, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend)
    before_the_lease(monkeypatch, lambda: assert_ok(email_sync.subprocess("run").code))

    assert email_sync("sync", "1").code == EXIT_OK

    run_key, operator_key = (call.header("Idempotency-Key") for call in backend.sync_calls(1))
    assert run_key != operator_key, "the run's answer must not be replayed for the operator's sync"


def test_sync_user_refuses_a_user_parked_after_it_was_found(
    pg: AppDb, backend: Backend, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend)
    before_the_lease(
        monkeypatch, lambda: assert_ok(email_sync.subprocess("park", "1", "--reason", "mailbox being migrated").code)
    )

    result = email_sync("sync", "1")

    result.assert_one_clear_error(EXIT_NO, "parked", "mailbox being migrated", "unpark")
    assert backend.sync_calls() == [] and pg.leased() == []


def test_sync_of_an_unknown_user_exits_64(after_a_run: AppDb, email_sync: EmailSync) -> None:
    email_sync("sync", "nobody@example.com").assert_one_clear_error(EXIT_USAGE, "nobody@example.com")


def test_sync_user_that_fails_exits_2_and_records_the_failure(
    after_a_run: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    result = email_sync("sync", "3")

    assert result.code == EXIT_NO
    assert after_a_run.state(3).failures == 2


def test_users_lists_due_failing_and_leased(after_a_run: AppDb, email_sync: EmailSync) -> None:
    after_a_run.add_users(1, start=7)

    due, failing, leased = (
        email_sync("users", "--due"),
        email_sync("users", "--failing"),
        email_sync("users", "--leased"),
    )

    assert due.stdout.split() == ["7", "never", "synced"]
    assert failing.stdout.startswith("3 ") and "mailbox locked" in failing.stdout
    assert leased.stdout.startswith("6 ") and "leased by" in leased.stdout


def test_run_with_a_limit_claims_at_most_that_many_users_and_leaves_the_rest_due(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(5)
    email_sync.configure(pg, backend)

    result = email_sync("run", "--limit", "2")

    assert result.code == EXIT_OK, result.stdout
    assert len(pg.synced_ids()) == 2 and len(backend.sync_calls()) == 2
    assert (pg.runs()[0].due, pg.runs()[0].synced) == (5, 2)
    assert len(email_sync("users", "--due").stdout.splitlines()) == 3


def test_a_limit_above_max_users_per_run_does_not_raise_it(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(5)
    email_sync.configure(pg, backend, sync={"max_users_per_run": 3})

    assert email_sync("run", "--limit", "4").code == EXIT_OK

    assert len(pg.synced_ids()) == 3


def test_reset_one_user_clears_its_backoff_so_the_next_run_retries(
    after_a_run: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.script(3)
    assert email_sync("reset", "3").code == EXIT_OK
    assert after_a_run.state(3).failures == 0

    email_sync("run")

    assert 3 in after_a_run.synced_ids()


def test_reset_all_failing_clears_every_backoff(after_a_run: AppDb, email_sync: EmailSync) -> None:
    after_a_run.execute("INSERT INTO email_sync_user_state (user_id, failures) VALUES ('99', 4)")

    result = email_sync("reset", "--all-failing")

    assert result.event("backoff_reset")["users"] == 2
    assert after_a_run.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures > 0") == 0


MONITOR = {
    "MONITOR_UNIT": "email-sync.service",
    "MONITOR_SERVICE_RESULT": "exit-code",
    "MONITOR_EXIT_CODE": "exited",
    "MONITOR_EXIT_STATUS": "78",
}


def test_alert_posts_the_failed_units_facts_to_the_webhook(
    pg: AppDb, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in MONITOR.items():
        monkeypatch.setenv(name, value)
    with Backend(sync_path="/hooks/email-sync") as hook:
        email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + "/hooks/email-sync"})
        result = email_sync("alert")
        [call] = hook.sync_calls()

    assert result.code == EXIT_OK
    assert call.json["unit"] == "email-sync.service"
    assert (call.json["result"], call.json["exit_status"]) == ("exit-code", "78")
    assert call.json["host"] and isinstance(call.json["log"], list)


def test_alert_webhook_goes_through_the_environments_proxy(
    pg: AppDb, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Backend(sync_path="/hooks/email-sync") as hook, Backend(sync_path="/hooks/email-sync") as proxy:
        monkeypatch.setenv("http_proxy", proxy.base_url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + "/hooks/email-sync"})
        result = email_sync("alert", "email-sync.service")
        [call] = proxy.sync_calls()

        assert hook.sync_calls() == []
    assert result.code == EXIT_OK
    assert call.path == hook.base_url + "/hooks/email-sync"  # the absolute form a proxy gets


def test_alert_webhook_skips_the_proxy_for_no_proxy_hosts(
    pg: AppDb, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Backend(sync_path="/hooks/email-sync") as hook, Backend(sync_path="/hooks/email-sync") as proxy:
        monkeypatch.setenv("http_proxy", proxy.base_url)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + "/hooks/email-sync"})
        result = email_sync("alert", "email-sync.service")

        assert proxy.requests() == [] and len(hook.sync_calls()) == 1
    assert result.code == EXIT_OK


def test_alert_webhook_over_https_trusts_the_systems_cas(
    pg: AppDb, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch, self_signed_cert: tuple[str, str]
) -> None:
    """As curl does: the CAs the system trusts (SSL_CERT_FILE here, ca-certificates on Debian), not a bundle of its
    own, so an operator's internal CA works for the webhook."""
    monkeypatch.delenv("https_proxy", raising=False)
    with Backend(sync_path="/hook", tls=self_signed_cert) as hook:
        email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + "/hook"})
        untrusted = email_sync("alert", "email-sync.service")
        monkeypatch.setenv("SSL_CERT_FILE", self_signed_cert[0])
        trusted = email_sync("alert", "email-sync.service")
        calls = hook.sync_calls()

    untrusted.assert_one_clear_error(EXIT_TEMPFAIL, "alert webhook unreachable: SSLError")
    assert trusted.code == EXIT_OK and len(calls) == 1


def test_a_webhook_redirect_is_not_followed(pg: AppDb, email_sync: EmailSync) -> None:
    with Backend(sync_path="/hook") as hook, Backend(sync_path="/hook") as elsewhere:
        hook.set_default(Behaviour(status=302, headers={"Location": elsewhere.base_url + "/hook"}))
        email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + "/hook"})
        result = email_sync("alert", "email-sync.service")

        assert elsewhere.requests() == []
    result.assert_one_clear_error(EXIT_TEMPFAIL, "alert webhook answered 302")


def test_alert_runs_the_command_with_the_alert_on_stdin(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in MONITOR.items():
        monkeypatch.setenv(name, value)
    received = tmp_path / "alert.json"
    email_sync.configure(pg, backend, alert={"command": f"tee {received}"})

    assert email_sync("alert").code == EXIT_OK

    assert json.loads(received.read_text())["exit_status"] == "78"


def test_alerting_is_off_by_default(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend)

    result = email_sync("alert", "email-sync.service")

    assert result.code == EXIT_OK
    assert result.event("alert_disabled")["unit"] == "email-sync.service"


def test_a_failing_webhook_exits_75(pg: AppDb, email_sync: EmailSync) -> None:
    with Backend(sync_path="/hook") as hook:
        hook.set_default(Behaviour(status=500))
        email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + "/hook"})
        result = email_sync("alert")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "alert webhook answered 500")


def test_a_run_that_finds_the_backend_down_is_recorded_and_counted_in_metrics(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    textfile = tmp_path / "email_sync.prom"
    pg.add_users(2)
    backend.health_status = 503
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)})

    assert email_sync("run").code == EXIT_TEMPFAIL

    [run] = pg.runs()
    assert run.outcome == "backend_unavailable" and "503" in run.error
    assert 'email_sync_last_run_outcome{outcome="backend_unavailable"} 1' in textfile.read_text()
    assert "the last run failed: backend_unavailable" in email_sync("status").stdout
