#!/usr/bin/env bash
# make deb-test: the proofs that each release's dist/<release>/email-sync_<version>+deb<N>_<arch>.deb is a good
# Debian package of that release (every release of packaging/releases, or SUITE=trixie for one).
#
#   [SUITE=...] packaging/deb-test.sh [lintian] [units] [piuparts] [repro] [boot] [rolling]   (default: all six)
#
#   lintian   the release's own lintian (in its build chroot), --fail-on error,warning, on the .changes
#   units     every email-sync unit a shipped unit names (OnFailure=, Wants=, ...) is in the .deb (unit_refs.py)
#   piuparts  the release's own piuparts (in its build chroot): install -> purge, and install of 0.0.9-1+deb<N>
#             (this tree built as an older version: the upgrade fixture) -> upgrade -> purge
#   repro     a rebuild from the source package alone (.dsc, tarballs) gives the same .deb bytes
#   boot      tests/installed, one pytest run for all releases: in a booted container of each release, the
#             package installed from a signed apt repository (packaging/repo.sh) and proven feature by feature
#   rolling   tests/rolling, on the newest requested release only: three booted containers on one PostgreSQL,
#             timers on, upgraded one at a time by unattended-upgrades from the previous release (built from its
#             own commit, $PREVIOUS_COMMIT) to this one, then from this one to a test-only next release with a
#             schema step and a new configuration key, each host's edited configuration kept.
#
# Root; caches under /var/cache/email-sync-build (shared with deb-build.sh). Everything started here is stopped and
# removed on exit, failure or not. Nothing is ever skipped: a missing tool is installed, a missing prerequisite
# is a failure.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(lintian units piuparts repro boot rolling)
want() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

ARCH=$(dpkg --print-architecture)
FIXTURE_VERSION=0.0.9-1
# The last release before this tree's, as its own commit built it: what a fleet upgrades from (tests/rolling).
PREVIOUS_COMMIT=22aa74a
mapfile -t SUITES < <(requested_suites)
ensure_host_tools
WORK=$(mktemp -d "$CACHE/test-XXXXXX")
cleanup() {
    local rc=$?
    rm -rf "$WORK"
    [ $rc -eq 0 ] && log "all requested proofs passed: ${STEPS[*]} for ${SUITES[*]}" || log "FAILED (exit $rc)"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The upgrade fixture of the release: this tree built as $FIXTURE_VERSION, in $DIST/fixtures/<release> (reused
# while the tree is unchanged: its tree hash is the one make deb recorded).
fixture() {
    local out=$DIST/fixtures/$SUITE fixture_deb
    fixture_deb=$out/email-sync_$(deb_version "$FIXTURE_VERSION")_$ARCH.deb
    if [ ! -f "$fixture_deb" ] || ! cmp -s "$out/tree-sha256" "$DIST/$SUITE/email-sync_${DEB_VERSION}_$ARCH.tree-sha256"; then
        log "building the upgrade fixture: this tree as version $(deb_version "$FIXTURE_VERSION")"
        rm -rf "$out"
        SUITE=$SUITE "$ROOT/packaging/deb-build.sh" --version "$FIXTURE_VERSION" --out "$out.tmp" >"$WORK/fixture.log" 2>&1 \
            || { tail -20 "$WORK/fixture.log" >&2; die "fixture build"; }
        rm -f "$out.tmp"/*.changes "$out.tmp"/*.buildinfo "$out.tmp"/*.log "$out.tmp"/*.dsc "$out.tmp"/*.tar.xz
        cp "$DIST/$SUITE/email-sync_${DEB_VERSION}_$ARCH.tree-sha256" "$out.tmp/tree-sha256"
        mv "$out.tmp" "$out"
    fi
    echo "$fixture_deb"
}

# The previous release of the release: the tree of $PREVIOUS_COMMIT built by that tree's own deb-build.sh (its
# make deb), into $DIST/previous/<release> (reused while it is from that commit). The shared caches (chroot,
# wheelhouse) serve it too.
previous() {
    local out=$DIST/previous/$SUITE commit tree
    if [ "$(git -C "$ROOT" rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
        log "a shallow clone: fetching the history for the previous release's commit $PREVIOUS_COMMIT"
        git -C "$ROOT" fetch --quiet --unshallow || die "git fetch --unshallow (the previous release is built from its commit)"
    fi
    commit=$(git -C "$ROOT" rev-parse --verify --quiet "$PREVIOUS_COMMIT^{commit}") \
        || die "no commit $PREVIOUS_COMMIT (the previous release) in $ROOT: the rolling upgrade needs the git history (a full clone)"
    if [ ! -f "$out/commit" ] || [ "$(cat "$out/commit")" != "$commit" ]; then
        log "$SUITE: building the previous release from its commit $PREVIOUS_COMMIT, with its own packaging/deb-build.sh"
        tree=$WORK/previous-$SUITE
        mkdir -p "$tree"
        git -C "$ROOT" archive "$commit" | tar -x -C "$tree"
        rm -rf "$out" "$out.tmp"
        (cd "$tree" && SUITE=$SUITE DIST=$out.tmp EMAIL_SYNC_BUILD_CACHE=$CACHE packaging/deb-build.sh) \
            >"$WORK/previous.log" 2>&1 || { tail -20 "$WORK/previous.log" >&2; die "$SUITE: the previous release's build"; }
        mv "$out.tmp/$SUITE" "$out"
        rm -rf "$out.tmp"
        echo "$commit" >"$out/commit"
    fi
    ls "$out"/email-sync_*_"$ARCH".deb
}

# A next release that exists only for tests/rolling: this tree with one more schema step (a table nobody uses) and
# one more configuration key (in the reference, not in an admin's file), versioned after it (<version>+next), in
# $DIST/next/<release>; rebuilt when the tree changed since make deb.
next_release() {
    local out=$DIST/next/$SUITE src=$WORK/next-$SUITE version
    version=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -SVersion | sed 's/-\([^-]*\)$/+next-\1/')
    if [ ! -f "$out/tree-sha256" ] || ! cmp -s "$out/tree-sha256" "$DIST/$SUITE/email-sync_${DEB_VERSION}_$ARCH.tree-sha256"; then
        log "$SUITE: building the test-only next release $(deb_version "$version"): this tree, a schema step and a key"
        copy_tree "$src"
        python3 - "$src" <<'EOF_PY' || die "could not add the next release's schema step"
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
schema = root / "emailsync" / "store" / "schema.py"
text = schema.read_text()
steps = re.search(r"^STEPS: tuple\[Step, \.\.\.\] = \(\n(.*?)^\)\n", text, re.S | re.M)
last = int(re.findall(r"Step\((\d+),", steps[1])[-1])
step = f'''

def _next_release_probe(d: Dialect) -> list[str]:
    return ["CREATE TABLE IF NOT EXISTS email_sync_next_release_probe (id integer)"]
'''
text = (
    text[: steps.start()] + step.lstrip("\n") + "\n\n" + text[steps.start() : steps.end(1)]
    + f"    Step({last + 1}, _next_release_probe),\n" + text[steps.end(1) :]
)
schema.write_text(text)
init = root / "emailsync" / "__init__.py"
init.write_text(re.sub(r"^SCHEMA_VERSION = \d+$", f"SCHEMA_VERSION = {last + 1}", init.read_text(), flags=re.M))
config = root / "emailsync" / "config" / "settings.py"
section = "class LoggingConfig:\n"
assert section in config.read_text()
config.write_text(config.read_text().replace(section, section + (
    '    next_release_probe: str = key(values.text, "", "A key that only the test-only next release has.")\n'
)))
EOF_PY
        (cd "$src" && python3 -B -m emailsync config --sample >packaging/email-sync.toml) \
            || die "could not render the next release's example configuration"
        rm -rf "$out" "$out.tmp"
        SUITE=$SUITE "$ROOT/packaging/deb-build.sh" --from "$src" --version "$version" --out "$out.tmp" \
            >"$WORK/next.log" 2>&1 || { tail -20 "$WORK/next.log" >&2; die "$SUITE: the next release's build"; }
        rm -f "$out.tmp"/*.changes "$out.tmp"/*.buildinfo "$out.tmp"/*.log "$out.tmp"/*.dsc "$out.tmp"/*.tar.xz
        cp "$DIST/$SUITE/email-sync_${DEB_VERSION}_$ARCH.tree-sha256" "$out.tmp/tree-sha256"
        mv "$out.tmp" "$out"
    fi
    ls "$out"/email-sync_*_"$ARCH".deb
}

prove() {
    use_suite "$1"
    DEB_VERSION=$(deb_version)
    DEB=$SUITE_DIST/email-sync_${DEB_VERSION}_${ARCH}.deb
    CHANGES=$SUITE_DIST/email-sync_${DEB_VERSION}_${ARCH}.changes
    [ -f "$DEB" ] && [ -f "$CHANGES" ] || die "no $DEB / $CHANGES: run make deb first"
    exec 9>"$CACHE/.lock"
    flock 9
    CHROOT=$(build_chroot)
    BASE=$(base_rootfs)
    MIRROR=$(cat "$BASE.complete")
    flock -u 9
    mkdir -p "$CHROOT/dist" "$CHROOT/work" "$CHROOT/piuparts"

    if want lintian; then
        log "$SUITE: its lintian --fail-on error,warning $(basename "$CHANGES")"
        nspawn "$CHROOT" --read-only --tmpfs=/tmp:mode=1777 -E HOME=/tmp -E TMPDIR=/tmp --bind-ro="$SUITE_DIST:/dist" \
            setpriv --reuid=nobody --regid=nogroup --clear-groups lintian --fail-on error,warning --display-info \
            --color never --tag-display-limit 0 "/dist/$(basename "$CHANGES")" | tee "$WORK/lintian-$SUITE.log" \
            || die "$SUITE: lintian found errors or warnings (above)"
        log "$SUITE: lintian $(nspawn "$CHROOT" --read-only lintian --version): $(grep -c '^[EW]:' \
            "$WORK/lintian-$SUITE.log" || true) errors/warnings, $(grep -c '^I:' "$WORK/lintian-$SUITE.log" || true) info tags"
    fi

    if want units; then
        python3 "$ROOT/packaging/unit_refs.py" "$DEB" || die "$SUITE: a shipped unit names a unit the package lacks"
    fi

    if want piuparts; then
        local basetgz=$CACHE/piuparts/base-$SUITE.tgz fixture_deb repo rc=0
        exec 9>"$CACHE/.lock"; flock 9
        if [ ! -e "$basetgz" ] || [ "$basetgz" -ot "$BASE.complete" ]; then
            log "$SUITE: making the piuparts base tarball from $BASE"
            mkdir -p "$CACHE/piuparts"
            tar -C "$BASE" -czf "$basetgz.tmp" . && mv "$basetgz.tmp" "$basetgz"
        fi
        flock -u 9
        fixture_deb=$(fixture)
        repo=$WORK/piuparts-$SUITE
        mkdir -p "$repo/repo"
        cp "$fixture_deb" "$DEB" "$repo/repo/"
        (cd "$repo/repo" && apt-ftparchive packages . >Packages)
        grep -q "^Version: $(deb_version "$FIXTURE_VERSION")" "$repo/repo/Packages" || die "fixture repository"
        # With the fixture known to apt, piuparts runs both tests: install -> purge of the new .deb, and install of
        # the fixture (apt) -> upgrade to the new .deb -> purge. The release's own piuparts, in its chroot.
        # The metrics group comes from sysusers.d, so the package depends on systemd (or a sysusers): installing
        # systemd in piuparts' chroot runs systemd's own tmpfiles.d, whose directories outlive its removal. They
        # are systemd's, not ours (Debian 12's piuparts reports them; on Debian 13 the same install and purge passes).
        log "$SUITE: its piuparts: install->purge and install $(deb_version "$FIXTURE_VERSION")->upgrade to $DEB_VERSION->purge"
        nspawn "$CHROOT" --read-only --tmpfs=/tmp --bind="$repo:/work" --bind-ro="$CACHE/piuparts:/piuparts" \
            piuparts -d "$SUITE" -m "$MIRROR" -b "/piuparts/base-$SUITE.tgz" -t /work --bindmount=/work/repo \
            --extra-repo="deb [trusted=yes] file:///work/repo ./" -l /work/piuparts.log \
            --ignore-regex='^/(root/\.ssh|var/(cache|lib|log)/private|var/lib/systemd/(coredump|pstore))/$' \
            "/work/repo/$(basename "$DEB")" >/dev/null 2>&1 || rc=$?
        cp "$repo/piuparts.log" "$SUITE_DIST/piuparts.log"
        [ $rc -eq 0 ] || { grep -E 'FAIL|ERROR' -A30 "$repo/piuparts.log" | head -80 >&2; die "$SUITE: piuparts (log: $SUITE_DIST/piuparts.log)"; }
        grep -q 'PASS: Installation and purging test' "$repo/piuparts.log" || die "piuparts: no install-purge PASS"
        grep -q 'PASS: Installation, upgrade and purging tests' "$repo/piuparts.log" \
            || die "$SUITE: piuparts did not run the upgrade test (log: $SUITE_DIST/piuparts.log)"
        grep -o 'PASS: .*' "$repo/piuparts.log" | sed "s/^/  $SUITE piuparts /" >&2
    fi

    if want repro; then
        local snap=$WORK/snapshot-$SUITE first=$DEB second
        copy_tree "$snap"
        if [ "$(tree_hash "$snap")" != "$(cat "$SUITE_DIST/email-sync_${DEB_VERSION}_${ARCH}.tree-sha256" 2>/dev/null)" ]; then
            log "$SUITE: the tree changed since make deb: building it twice"
            SUITE=$SUITE "$ROOT/packaging/deb-build.sh" --from "$snap" --out "$WORK/repro1-$SUITE" >"$WORK/repro1.log" 2>&1 \
                || { tail -20 "$WORK/repro1.log" >&2; die "first build"; }
            first=$WORK/repro1-$SUITE/$(basename "$DEB")
        fi
        log "$SUITE: a second build from that build's source package alone (.dsc and tarballs, offline)"
        SUITE=$SUITE "$ROOT/packaging/deb-build.sh" --dsc "$(dirname "$first")/email-sync_$DEB_VERSION.dsc" \
            --out "$WORK/repro-$SUITE" >"$WORK/repro.log" 2>&1 || { tail -20 "$WORK/repro.log" >&2; die "the build from the source package"; }
        second=$WORK/repro-$SUITE/$(basename "$DEB")
        if cmp -s "$first" "$second"; then
            log "$SUITE: reproducible from the source package: both builds are sha256 $(sha256sum <"$first" | cut -c1-64)"
        else
            mkdir -p "$WORK/a" "$WORK/b"
            dpkg-deb -R "$first" "$WORK/a"; dpkg-deb -R "$second" "$WORK/b"
            diff -r "$WORK/a" "$WORK/b" | head -20 >&2 || true
            die "$SUITE: the two builds differ (files above)"
        fi
    fi

    if want boot; then
        # What tests/installed needs of this release: the fixture (the version to upgrade from) and a plain
        # bootable rootfs (curl: the README's flow fetches the repository key with it).
        fixture >/dev/null
        exec 9>"$CACHE/.lock"; flock 9
        derive_rootfs "$CACHE/boot-$SUITE" boot-rootfs systemd systemd-sysv dbus python3 curl
        flock -u 9
    fi
}

# The rolling upgrade runs on one release: what it proves (schema steps applied by one host under the lock, older
# hosts standing aside, a cycle stopped cleanly by an upgrade, several hosts' leases on one database, upgrades that
# unattended-upgrades makes with the admin's configuration kept) is the same Python code and the same maintainer
# scripts on every release; each release's interpreter, libpq and upgrade are proven by boot.
ROLLING_SUITE=${SUITES[${#SUITES[@]}-1]}
rolling() {
    use_suite "$ROLLING_SUITE"
    DEB_VERSION=$(deb_version)
    DEB=$SUITE_DIST/email-sync_${DEB_VERSION}_${ARCH}.deb
    [ -f "$DEB" ] || die "no $DEB: run make deb first"
    # The bootable rootfs with Debian's unattended-upgrades, which upgrades the hosts.
    exec 9>"$CACHE/.lock"; flock 9
    derive_rootfs "$CACHE/rolling-$SUITE" rolling-rootfs systemd systemd-sysv dbus python3 curl unattended-upgrades
    flock -u 9
    ROLLING_PREVIOUS=$(previous)
    ROLLING_NEXT=$(next_release)
    log "$SUITE: tests/rolling: $(basename "$ROLLING_PREVIOUS") -> $(basename "$DEB") -> $(basename "$ROLLING_NEXT"), three hosts"
    (cd "$ROOT" && EMAIL_SYNC_ROLLING_SUITE=$SUITE EMAIL_SYNC_BUILD_CACHE=$CACHE EMAIL_SYNC_ROLLING_DEBS="$ROLLING_PREVIOUS $DEB $ROLLING_NEXT" \
        "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider tests/rolling) || die "tests/rolling"
}

for suite in "${SUITES[@]}"; do prove "$suite"; done

if want boot; then
    PY=$ROOT/.venv/bin/python
    [ -x "$PY" ] || die "no $PY: run make venv first (the suite runs on the host)"
    log "tests/installed for ${SUITES[*]}: a booted container each, email-sync from the signed repository"
    (cd "$ROOT" && EMAIL_SYNC_SUITES="${SUITES[*]}" EMAIL_SYNC_BUILD_CACHE=$CACHE DIST=$DIST \
        "$PY" -m pytest -p no:cacheprovider tests/installed) || die "tests/installed"
fi

if want rolling; then
    [ -x "$ROOT/.venv/bin/python" ] || die "no $ROOT/.venv/bin/python: run make venv first (the suite runs on the host)"
    rolling
fi
