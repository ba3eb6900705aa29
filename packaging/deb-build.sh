#!/usr/bin/env bash
# make deb: for each supported Debian release (packaging/releases; SUITE=trixie for one), build
# dist/<release>/email-sync_<version>+deb<N>_<arch>.deb (+ .changes, .buildinfo) and its source package (.dsc, orig
# tarballs) in a clean chroot of that release, against its python3 and libpq.
#
#   [SUITE=bookworm] packaging/deb-build.sh [--version 0.0.9-1] [--out DIR]
#   SUITE=bookworm packaging/deb-build.sh --dsc dist/bookworm/email-sync_0.2.0-1+deb12.dsc [--out DIR]
#
# The version is debian/changelog's plus +deb<N> (N: the release's major version), written into the copy's
# changelog (and into debian/NEWS when its latest entry is this version's) with the release as its distribution: the same tree gives one package per release, a newer release's
# sorting after an older one's. The orig tarballs are the same for every release (the wheelhouse holds every
# release's wheels).
# The chroot (debootstrap + the Build-Depends, cached under /var/cache/email-sync-build) runs read-only under
# systemd-nspawn; only /build (a copy of the tree) and /tmp are writable, so nothing of the host (its pyenv
# Python, its pip config) and nothing of an earlier build leaks in. Python packages come from the wheelhouse
# (downloaded on the host, hash-checked against requirements.lock), shipped in the source package as its
# orig-wheels component: the build is offline. Out: the .deb, and the source package (.dsc and tarballs).
# --from DIR builds that copy of the tree instead of the working tree (deb-test's reproducibility check).
# --version builds the same tree as another version (the upgrade fixture): changelog, pyproject.toml and
# emailsync/__init__.py of the copy get that version (+deb<N> in the changelog), and it has no debian/NEWS.
# --dsc rebuilds a source package alone, as anyone would from the .dsc and its tarballs (deb-test's proof that it
# rebuilds offline to the same bytes).
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"

VERSION=
FROM=
DSC=
OUT=
ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --version) VERSION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --from) FROM=$2; shift 2 ;;
        --dsc) DSC=$(realpath "$2"); shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done

mapfile -t SUITES < <(requested_suites)
if [ ${#SUITES[@]} -gt 1 ]; then
    [ -z "$DSC$OUT" ] || die "--dsc and --out need one release: SUITE=<codename>"
    for suite in "${SUITES[@]}"; do SUITE=$suite "$0" "${ARGS[@]}"; done
    exit 0
fi
use_suite "${SUITES[0]}"
OUT=${OUT:-$SUITE_DIST}

started=$(date +%s)
# The example configuration is the package's own rendering of its config keys (tests/deb/test_config_template.py
# holds it there).
(cd "$ROOT" && python3 -B -m emailsync config --sample) | cmp -s - "$ROOT/packaging/email-sync.toml" \
    || die "packaging/email-sync.toml is stale: run make docs and commit it"
ensure_host_tools

exec 9>"$CACHE/.lock"
flock 9
CHROOT=$(build_chroot)
WHEELHOUSE=$(wheelhouse)
flock -u 9

WORK=$(mktemp -d "$CACHE/work-XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

orig_tarball() {  # orig_tarball FILE DIR [tar options]: DIR (below $WORK) as a byte-for-byte repeatable tarball
    local file=$1 dir=$2; shift 2
    tar -C "$WORK" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
        "$@" -cf - "$dir" | xz -6 -T1 >"$file"
}

if [ -n "$DSC" ]; then
    upstream=$(sed -n 's/^Version: \(.*\)-[^-]*$/\1/p' "$DSC")
    cp "$DSC" $(awk '/^Files:/ { files = 1; next } /^[^ ]/ { files = 0 } files { print $3 }' "$DSC" |
        sed "s|^|$(dirname "$DSC")/|") "$WORK/"
    TREE="the source package $(basename "$DSC")"
    UNPACK="dpkg-source -x $(basename "$DSC") email-sync-$upstream"
else
    upstream=$(dpkg-parsechangelog -l "${FROM:-$ROOT}/debian/changelog" -SVersion | sed 's/-[^-]*$//')
    [ -n "$VERSION" ] && upstream=${VERSION%-*}
    SRC=$WORK/email-sync-$upstream
    mkdir -p "$SRC"
    if [ -n "$FROM" ]; then
        cp -a "$FROM/." "$SRC/"
    else
        copy_tree "$SRC"
    fi
    TREE=$(tree_hash "$SRC")  # the tree as committed, before this build's version is written into it

    if [ -n "$VERSION" ]; then
        log "building as version $VERSION (fixture)"
        maintainer=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -SMaintainer)
        date=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -SDate)
        sed -i "0,/^version = .*/s//version = \"$upstream\"/" "$SRC/pyproject.toml"
        sed -i "s/^__version__ = .*/__version__ = \"$upstream\"/" "$SRC/emailsync/__init__.py"
        {
            echo "email-sync ($(deb_version "$VERSION")) $SUITE; urgency=medium"
            echo
            echo "  * Test fixture: the same tree as an older version, for the piuparts upgrade test."
            echo
            echo " -- $maintainer  $date"
        } >"$SRC/debian/changelog"
        rm -f "$SRC/debian/NEWS"  # its news are of the real versions, not of this fixture
    else
        release=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -SVersion)
        sed -i "1s/^email-sync (\([^)]*\)) [^;]*;/email-sync (\1+deb$DEBIAN_MAJOR) $SUITE;/" "$SRC/debian/changelog"
        # A NEWS.Debian entry for this release names the same version and distribution as its changelog entry.
        if [ -f "$SRC/debian/NEWS" ] && [ "$(dpkg-parsechangelog -l "$SRC/debian/NEWS" -SVersion)" = "$release" ]; then
            sed -i "1s/^email-sync (\([^)]*\)) [^;]*;/email-sync (\1+deb$DEBIAN_MAJOR) $SUITE;/" "$SRC/debian/NEWS"
        fi
    fi
    [ "$(dpkg-parsechangelog -l "$SRC/debian/changelog" -SDistribution)" = "$SUITE" ] || die "changelog for $SUITE"

    # Reproducible input: every file's mtime is the changelog's date, the umask fixed, the build path constant.
    SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -STimestamp)
    normalize_tree "$SRC" "$SOURCE_DATE_EPOCH"

    # The source package: the tree as the orig tarball, and the wheelhouse as its second component (wheels/), so
    # the .dsc rebuilds offline anywhere: dpkg-source -x email-sync_*.dsc && cd email-sync-* && dpkg-buildpackage.
    orig_tarball "$WORK/email-sync_$upstream.orig.tar.xz" "email-sync-$upstream" --exclude="email-sync-$upstream/debian"
    mkdir -p "$WORK/wheels"
    cp "$WHEELHOUSE"/* "$WORK/wheels/"
    normalize_tree "$WORK/wheels" "$SOURCE_DATE_EPOCH"
    orig_tarball "$WORK/email-sync_$upstream.orig-wheels.tar.xz" wheels
    mv "$WORK/wheels" "$SRC/wheels"
    UNPACK=true
fi

mkdir -p "$CHROOT/build"  # a mount point (the root is read-only under nspawn)
log "building for $SUITE in $CHROOT (read-only) from ${DSC:-$SRC}"
nspawn "$CHROOT" --read-only --tmpfs=/tmp --tmpfs=/var/tmp --bind="$WORK:/build" \
    -E HOME=/build -E TZ=UTC -E DEB_BUILD_OPTIONS=parallel=1 --chdir=/build \
    sh -c "umask 022 && $UNPACK && cd email-sync-$upstream && dpkg-buildpackage -uc -us" >"$WORK/build.log" 2>&1 \
    || { grep -v '^ *copying\|^ *adding\|^creating' "$WORK/build.log" | tail -40 >&2; die "dpkg-buildpackage (log above)"; }

mkdir -p "$OUT"
shopt -s nullglob
files=("$WORK"/*.deb "$WORK"/*.changes "$WORK"/*.buildinfo "$WORK"/*.dsc "$WORK"/*.tar.xz)
[ ${#files[@]} -ge 7 ] || die "no .deb/.changes/.buildinfo/.dsc/tarballs in $WORK"
cp "${files[@]}" "$OUT/"
cp "$WORK/build.log" "$OUT/email-sync_$(basename "${files[0]}" .deb | cut -d_ -f2)_build.log"
# What was built, for deb-test's reproducibility check.
echo "$TREE" >"$OUT/email-sync_$(basename "${files[0]}" .deb | cut -d_ -f2-).tree-sha256"
for f in "${files[@]}"; do log "built $OUT/$(basename "$f")"; done
log "done in $(( $(date +%s) - started ))s"
