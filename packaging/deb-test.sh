#!/usr/bin/env bash
# make deb-test: the proofs that dist/email-sync_<version>_<arch>.deb is a good Debian package.
#
#   packaging/deb-test.sh [lintian] [piuparts] [boot] [repro]      (default: all four)
#
#   lintian   lintian --fail-on error,warning on the .changes, in the build chroot (bookworm's lintian 2.116)
#   piuparts  install -> purge, and install of 0.0.9-1 (this tree built as an older version) -> upgrade -> purge
#   boot      in a booted Debian 12 container: apt install ./*.deb, nothing enabled; configure against the host's
#             PostgreSQL and a test backend; migrate; enable --now the timer; a run succeeds and syncs everyone;
#             the system python3 cannot import the venv's packages; dpkg -r, dpkg -P leave nothing behind
#   repro     a rebuild from the source package alone (.dsc, tarballs) gives the same .deb bytes
#
# Root; caches under /var/cache/email-sync-build (shared with deb-build.sh). Everything started here (containers,
# the backend, the database, work directories) is stopped and removed on exit, failure or not. Nothing is ever
# skipped: a missing tool is installed, a missing prerequisite is a failure.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(lintian piuparts boot repro)
want() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

DEB_VERSION=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -SVersion)
ARCH=$(dpkg --print-architecture)
DEB=$DIST/email-sync_${DEB_VERSION}_${ARCH}.deb
CHANGES=$DIST/email-sync_${DEB_VERSION}_${ARCH}.changes
[ -f "$DEB" ] && [ -f "$CHANGES" ] || die "no $DEB / $CHANGES: run make deb first"
ensure_host_tools test

WORK=$(mktemp -d "$CACHE/test-XXXXXX")
NSPAWN_PID=
BACKEND_PID=
DATABASE=
PY=$ROOT/.venv/bin/python
ADMIN_URL=${EMAIL_SYNC_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}

# A command inside the booted container, as root, with a clean environment.
ctr() { nsenter -t "$LEADER" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= TERM=dumb "$@"; }
LEADER=

cleanup() {
    local rc=$?
    set +e
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        leader=$(ps -o pid= --ppid "$NSPAWN_PID" | head -1 | tr -d ' ')
        [ -n "$leader" ] && nsenter -t "$leader" -a systemctl poweroff --no-block >/dev/null 2>&1
        for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            [ -n "$leader" ] && kill -9 "$leader" 2>/dev/null
            kill -9 "$NSPAWN_PID" 2>/dev/null
        fi
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null && wait "$BACKEND_PID" 2>/dev/null
    [ -n "$DATABASE" ] && "$PY" - "$ADMIN_URL" "$DATABASE" <<'EOF'
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT")
with engine.connect() as c:
    c.execute(text(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)'))
EOF
    # piuparts cleans its own chroots; only our work directory is left to remove.
    rm -rf "$WORK"
    [ $rc -eq 0 ] && log "all requested proofs passed: ${STEPS[*]}" || log "FAILED (exit $rc)"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

exec 9>"$CACHE/.lock"
flock 9
CHROOT=$(build_chroot)
BASE=$(base_rootfs)
MIRROR=$(cat "$BASE.complete")
flock -u 9

# --- 1. lintian --------------------------------------------------------------------------------------------------
if want lintian; then
    log "lintian --fail-on error,warning $(basename "$CHANGES")"
    mkdir -p "$CHROOT/dist"
    nspawn "$CHROOT" --read-only --tmpfs=/tmp:mode=1777 -E HOME=/tmp -E TMPDIR=/tmp --bind-ro="$DIST:/dist" \
        setpriv --reuid=nobody --regid=nogroup --clear-groups lintian --fail-on error,warning --display-info --color never --tag-display-limit 0 \
        "/dist/$(basename "$CHANGES")" | tee "$WORK/lintian.log" \
        || die "lintian found errors or warnings (above)"
    log "lintian: $(grep -c '^[EW]:' "$WORK/lintian.log" || true) errors/warnings, $(grep -c '^I:' "$WORK/lintian.log" || true) info tags"
fi

# --- 2. piuparts -------------------------------------------------------------------------------------------------
if want piuparts; then
    BASETGZ=$CACHE/piuparts-base-$SUITE.tgz
    exec 9>"$CACHE/.lock"; flock 9
    if [ ! -e "$BASETGZ" ] || [ "$BASETGZ" -ot "$BASE.complete" ]; then
        log "making the piuparts base tarball from $BASE"
        tar -C "$BASE" -czf "$BASETGZ.tmp" . && mv "$BASETGZ.tmp" "$BASETGZ"
    fi
    flock -u 9
    log "building the upgrade fixture: this tree as version 0.0.9-1"
    REPO=$WORK/repo
    mkdir -p "$REPO"
    "$ROOT/packaging/deb-build.sh" --version 0.0.9-1 --out "$REPO" >"$WORK/fixture.log" 2>&1 \
        || { tail -20 "$WORK/fixture.log" >&2; die "fixture build"; }
    rm -f "$REPO"/*.changes "$REPO"/*.buildinfo "$REPO"/*.log
    (cd "$REPO" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null)
    grep -q '^Version: 0.0.9-1' "$REPO/Packages" || die "fixture repository"
    # With the fixture known to apt, piuparts runs both tests: install -> purge of the new .deb, and
    # install of 0.0.9-1 (apt) -> upgrade to the new .deb -> purge.
    log "piuparts: install->purge and install 0.0.9-1->upgrade to $DEB_VERSION->purge"
    rc=0
    piuparts -d "$SUITE" -m "$MIRROR" -b "$BASETGZ" --bindmount="$REPO" \
        --extra-repo="deb [trusted=yes] file://$REPO ./" \
        -l "$WORK/piuparts.log" "$DEB" >/dev/null 2>&1 || rc=$?
    cp "$WORK/piuparts.log" "$DIST/piuparts.log"
    [ $rc -eq 0 ] || { grep -E 'FAIL|ERROR' -A30 "$WORK/piuparts.log" | head -80 >&2; die "piuparts (log: $DIST/piuparts.log)"; }
    grep -q 'PASS: Installation and purging test' "$WORK/piuparts.log" || die "piuparts: no install-purge PASS"
    grep -q 'PASS: Installation, upgrade and purging tests' "$WORK/piuparts.log" \
        || die "piuparts did not run the upgrade test (log: $DIST/piuparts.log)"
    grep -o 'PASS: .*' "$WORK/piuparts.log" | sed 's/^/  piuparts /' >&2
fi

# --- 3. a booted Debian 12 ---------------------------------------------------------------------------------------
if want boot; then
    [ -x "$PY" ] || die "no $PY: run make venv first (the test backend and the database setup use it)"
    BOOT=$CACHE/boot-$SUITE
    exec 9>"$CACHE/.lock"; flock 9
    derive_rootfs "$BOOT" boot-rootfs systemd systemd-sysv dbus python3  # a plain booting Debian 12
    mkdir -p "$BOOT/dist"
    flock -u 9
    cp -a --reflink=auto "$BOOT" "$WORK/root"
    log "booting a copy of $BOOT"
    systemd-nspawn -D "$WORK/root" --register=no --keep-unit -b --console=passive --bind-ro="$DIST:/dist" \
        </dev/null >"$WORK/console.log" 2>&1 &
    NSPAWN_PID=$!
    # The container's PID 1 is the child of systemd-nspawn once it has exec'd systemd (an intermediate child
    # comes and goes first).
    LEADER=
    state=
    for _ in $(seq 1 600); do
        kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/console.log" >&2; die "systemd-nspawn exited"; }
        LEADER=$(ps -o pid= --ppid "$NSPAWN_PID" | head -1 | tr -d ' ' || true)
        if [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ]; then
            state=$(ctr timeout 5 systemctl is-system-running --wait 2>/dev/null || true)
            case $state in running|degraded) break ;; esac
        fi
        sleep 0.2
    done
    case $state in running|degraded) ;; *) die "container state '$state'" ;; esac
    log "container up ($state); apt install ./$(basename "$DEB")"
    ctr sh -c "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q /dist/$(basename "$DEB")" \
        >"$WORK/apt.log" 2>&1 || { tail -30 "$WORK/apt.log" >&2; die "apt install"; }
    # Only Debian's packages were needed: every installed package but ours comes from the Debian archive.
    ctr apt-cache policy email-sync python3.11 libpq5 >>"$WORK/apt.log"
    [ "$(ctr systemctl is-enabled email-sync.timer || true)" = disabled ] || die "the timer is enabled on install"
    [ "$(ctr systemctl is-active email-sync.timer || true)" = inactive ] || die "the timer is active on install"
    [ "$(ctr systemctl is-active email-sync.service || true)" = inactive ] || die "the service ran on install"
    [ "$(ctr email-sync --version)" = "email-sync ${DEB_VERSION%-*}" ] || die "email-sync --version"
    ctr email-sync --help >/dev/null || die "email-sync --help"
    [ "$(ctr stat -c %a /etc/email-sync/email-sync.toml)" = 644 ] || die "config mode"
    if ctr /usr/bin/python3 -c 'import structlog' 2>/dev/null; then die "the system python3 imports structlog"; fi
    [ -n "$(find "$WORK/root/usr/lib/email-sync" -name '*.pyc' -print -quit)" ] || die "postinst did not byte-compile the venv"

    DATABASE=email_sync_deb_$(date +%s)_$$
    log "database $DATABASE on ${ADMIN_URL#*@}, backend on the host"
    "$PY" - "$ADMIN_URL" "$DATABASE" <<'EOF' || die "cannot create the test database"
import sys
from sqlalchemy import create_engine, text
admin = create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT")
with admin.connect() as c:
    c.execute(text(f'CREATE DATABASE "{sys.argv[2]}"'))
url = sys.argv[1].rsplit("/", 1)[0] + "/" + sys.argv[2]
with create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1)).begin() as c:
    c.execute(text("CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, last_sync timestamptz)"))
    c.execute(text("INSERT INTO users (id, email) SELECT i, 'user' || i || '@example.com' FROM generate_series(1, 5) i"))
EOF
    DB_URL=${ADMIN_URL%/*}/$DATABASE
    # Each call takes 12 s: long enough that the upgrade below happens while a cycle is running.
    (cd "$ROOT" && exec "$PY" -m tests.backend --port 0 --latency 12) >"$WORK/backend.log" 2>&1 &
    BACKEND_PID=$!
    BACKEND_URL=
    for _ in $(seq 1 100); do
        BACKEND_URL=$(sed -n 's/^listening on //p' "$WORK/backend.log")
        [ -n "$BACKEND_URL" ] && break
        sleep 0.1
    done
    [ -n "$BACKEND_URL" ] || { cat "$WORK/backend.log" >&2; die "the test backend did not start"; }

    # The README's flow: edit the config, put the secret in the credential store, check, migrate, enable.
    ctr sh -euc "
        sed -i 's|^#base_url = .*|base_url = \"$BACKEND_URL\"|' /etc/email-sync/email-sync.toml
        install -d -m 0700 /etc/credstore
        umask 077; echo '$DB_URL' >/etc/credstore/email-sync.database-url
        email-sync migrate
        email-sync check
        systemctl enable --now email-sync.timer
    " >"$WORK/setup.log" 2>&1 || { cat "$WORK/setup.log" >&2; die "configure/migrate/enable"; }
    log "timer enabled; waiting for its first run (OnBootSec=1min)"
    prop() { ctr systemctl show email-sync.service -P "$1"; }
    # Waits until the service's run $1 (an InvocationID, or "any" for the first one) has ended; prints how.
    wait_run() {
        local _
        for _ in $(seq 1 150); do
            if [ "$(prop ExecMainExitTimestampMonotonic)" != 0 ] && [ "$(prop ActiveState)" != activating ] \
                && [ "$(prop ActiveState)" != active ] && { [ "$1" = any ] || [ "$(prop InvocationID)" = "$1" ]; }; then
                echo "Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus) ActiveState=$(prop ActiveState)"
                return
            fi
            sleep 1
        done
        echo "timed out: Result=$(prop Result) ActiveState=$(prop ActiveState)"
    }
    sql() {
        "$PY" - "$DB_URL" "$1" <<'EOF'
import sys
from sqlalchemy import create_engine, text
with create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg2://", 1)).begin() as c:
    result = c.execute(text(sys.argv[2]))
    if result.returns_rows:
        print(result.scalar())
EOF
    }
    SYNCED="SELECT count(*) FROM users WHERE last_sync IS NOT NULL"
    result=$(wait_run any)
    ctr journalctl -u email-sync.service --no-pager -o cat >"$WORK/journal.log" 2>&1 || true
    [ "$result" = "Result=success ExecMainStatus=0 ActiveState=inactive" ] \
        || { tail -20 "$WORK/journal.log" >&2; die "the timer's run did not succeed: $result"; }
    [ "$(sql "$SYNCED")" = 5 ] || { tail -20 "$WORK/journal.log" >&2; die "$(sql "$SYNCED") of 5 users synced"; }
    log "the timer's run succeeded (Result=success, exit 0) and synced 5 of 5 users"
    if ctr /usr/bin/python3 -c 'import structlog' 2>/dev/null; then die "the system python3 imports structlog"; fi

    # An upgrade (dpkg -i of the package over itself takes the same prerm upgrade / postinst configure OLD
    # path) while a cycle is running: the cycle must go on to its end, the timer stay enabled and active.
    sql "UPDATE users SET last_sync = NULL"
    ctr systemctl start email-sync.service
    running=$(prop InvocationID)
    [ "$(prop ActiveState)" = active ] || die "no cycle running before the upgrade"
    log "upgrading (dpkg -i over the installed version) during the running cycle $running"
    ctr dpkg -i "/dist/$(basename "$DEB")" >>"$WORK/apt.log" 2>&1 || die "dpkg -i (upgrade)"
    [ "$(prop InvocationID)" = "$running" ] && [ "$(prop ActiveState)" = active ] \
        || die "the upgrade stopped or restarted the running cycle"
    result=$(wait_run "$running")
    [ "$result" = "Result=success ExecMainStatus=0 ActiveState=inactive" ] || die "the cycle run across the upgrade: $result"
    [ "$(sql "$SYNCED")" = 5 ] || die "$(sql "$SYNCED") of 5 users synced by the cycle run across the upgrade"
    [ "$(ctr systemctl is-enabled email-sync.timer || true)" = enabled ] || die "the upgrade disabled the timer"
    [ "$(ctr systemctl is-active email-sync.timer || true)" = active ] \
        || { ctr systemctl status email-sync.timer >&2 || true; die "the upgrade left the timer inactive"; }
    log "the upgrade kept the running cycle (it finished: success, 5 of 5 synced) and the timer enabled and active"

    log "dpkg -r, then dpkg -P"
    ctr dpkg -r email-sync >>"$WORK/apt.log" 2>&1 || die "dpkg -r"
    [ "$(ctr systemctl is-active email-sync.timer || true)" != active ] || die "the timer still runs after remove"
    [ ! -e "$WORK/root/usr/lib/email-sync" ] || { find "$WORK/root/usr/lib/email-sync" | head >&2; die "/usr/lib/email-sync left after remove"; }
    ctr dpkg -P email-sync >>"$WORK/apt.log" 2>&1 || die "dpkg -P"
    for path in /usr/lib/email-sync /etc/email-sync /var/lib/email-sync /var/lib/private/email-sync \
        /etc/credstore/email-sync.database-url /usr/bin/email-sync; do
        [ ! -e "$WORK/root$path" ] && [ ! -L "$WORK/root$path" ] || die "$path left after purge"
    done
    ctr dpkg -s email-sync >/dev/null 2>&1 && die "email-sync still known to dpkg"
    log "boot test passed"
fi

# --- 4. reproducibility ------------------------------------------------------------------------------------------
if want repro; then
    SNAP=$WORK/snapshot
    copy_tree "$SNAP"
    FIRST=$DEB
    if [ "$(tree_hash "$SNAP")" != "$(cat "$DIST/email-sync_${DEB_VERSION}_${ARCH}.tree-sha256" 2>/dev/null)" ]; then
        log "the tree changed since make deb: building it twice"
        "$ROOT/packaging/deb-build.sh" --from "$SNAP" --out "$WORK/repro1" >"$WORK/repro1.log" 2>&1 \
            || { tail -20 "$WORK/repro1.log" >&2; die "first build"; }
        FIRST=$WORK/repro1/$(basename "$DEB")
    fi
    log "a second build from that build's source package alone (.dsc and tarballs, offline), to compare the bytes"
    "$ROOT/packaging/deb-build.sh" --dsc "$(dirname "$FIRST")/email-sync_$DEB_VERSION.dsc" --out "$WORK/repro" \
        >"$WORK/repro.log" 2>&1 || { tail -20 "$WORK/repro.log" >&2; die "the build from the source package"; }
    SECOND=$WORK/repro/$(basename "$DEB")
    if cmp -s "$FIRST" "$SECOND"; then
        log "reproducible from the source package: both builds are sha256 $(sha256sum <"$FIRST" | cut -c1-64)"
    else
        mkdir -p "$WORK/a" "$WORK/b"
        dpkg-deb -R "$FIRST" "$WORK/a"; dpkg-deb -R "$SECOND" "$WORK/b"
        diff -r "$WORK/a" "$WORK/b" | head -20 >&2 || true
        die "the two builds differ (files above)"
    fi
fi
