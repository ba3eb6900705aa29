# Shared by packaging/deb-build.sh, packaging/deb-test.sh and packaging/repo.sh (sourced, not run).
# Caches under $EMAIL_SYNC_BUILD_CACHE (default /var/cache/email-sync-build), per Debian release: a debootstrapped
# base, a build chroot made from it with the Build-Depends (and the release's lintian and piuparts), a bootable
# rootfs; and one wheelhouse for every release's Python. Each is written to NAME.tmp and renamed when complete,
# under a lock, so a killed run never leaves a half-made cache entry behind.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EMAIL_SYNC_BUILD_CACHE:-/var/cache/email-sync-build}
RELEASES=$ROOT/packaging/releases
DIST=${DIST:-$ROOT/dist}
IN_CI=false
[ "${CI:-}" = true ] && IN_CI=true
export LC_ALL=C.UTF-8

log() { printf '[deb %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, systemd-nspawn)"
mkdir -p "$CACHE"

# The supported releases' codenames, oldest first; release_field CODENAME N: column N of its line in $RELEASES.
releases() { awk '!/^#/ && NF { print $1 }' "$RELEASES"; }
release_field() { awk -v suite="$1" -v n="$2" '!/^#/ && $1 == suite { print $n }' "$RELEASES"; }

# The releases a command works on: $SUITE if set (make deb SUITE=trixie), else every supported one.
requested_suites() {
    local suite
    for suite in ${SUITE:-$(releases)}; do
        [ -n "$(release_field "$suite" 2)" ] || die "unknown release '$suite' (packaging/releases: $(releases | xargs))"
        echo "$suite"
    done
}

# use_suite CODENAME: work on that release from now on. SUITE_DIST is where its packages go; a package built for
# it is versioned <changelog version>+deb<major> (deb_version).
use_suite() {
    SUITE=$1
    DEBIAN_MAJOR=$(release_field "$SUITE" 2)
    [ -n "$DEBIAN_MAJOR" ] || die "unknown release '$SUITE'"
    SUITE_DIST=$DIST/$SUITE
}
deb_version() { echo "${1:-$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -SVersion)}+deb$DEBIAN_MAJOR"; }

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v apt-ftparchive >/dev/null || missing+=(apt-utils)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} on the host"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
}

# The Debian mirror the host's apt uses for its own release, which serves every release (http: apt inside chroots
# cannot use the host-only CA).
host_mirror() {
    local uri
    uri=$(python3 - "$(. /etc/os-release && echo "$VERSION_CODENAME")" <<'EOF'
import re, sys
from pathlib import Path
suite = sys.argv[1]
d = Path("/etc/apt/sources.list.d")
for p in sorted(d.glob("*.sources")):
    for stanza in re.split(r"\n\s*\n", p.read_text(errors="replace")):
        f = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
        if "deb" in f.get("Types", "").split() and suite in f.get("Suites", "").split() and f.get("Enabled", "yes") != "no":
            for uri in f.get("URIs", "").split():
                if uri.startswith("http://"):
                    print(uri.rstrip("/")); sys.exit()
for p in [Path("/etc/apt/sources.list"), *sorted(d.glob("*.list"))]:
    if p.is_file():
        for line in p.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(http://\S+)\s+(\S+)", line)
            if m and m[2] == suite:
                print(m[1].rstrip("/")); sys.exit()
EOF
)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Run a command with an exclusive lock on the cache.
with_lock() { flock "$CACHE/.lock" "$@"; }

# systemd-nspawn, not booted, sharing the host's network (apt over http), with a clean environment.
nspawn() {
    local root=$1; shift
    systemd-nspawn -q -D "$root" --register=no --keep-unit --as-pid2 \
        -E LC_ALL=C.UTF-8 -E DEBIAN_FRONTEND=noninteractive -E HOME=/root -E PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# $CACHE/base-$SUITE: debootstrap --variant=minbase, never modified afterwards.
base_rootfs() {
    local base=$CACHE/base-$SUITE
    if [ ! -e "$base.complete" ]; then
        local mirror; mirror=$(host_mirror)
        log "debootstrap $SUITE from $mirror (first run only, ~1 min)"
        rm -rf "$base" "$base.tmp"
        debootstrap --variant=minbase "$SUITE" "$base.tmp" "$mirror" >"$CACHE/debootstrap-$SUITE.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap-$SUITE.log" >&2; die "debootstrap"; }
        mv "$base.tmp" "$base"
        echo "$mirror" >"$base.complete"
    fi
    echo "$base"
}

# Build-Depends from debian/control, without version constraints.
build_depends() {
    python3 - "$ROOT/debian/control" <<'EOF'
import re, sys
text = open(sys.argv[1]).read().replace("\n ", " ")
deps = re.search(r"^Build-Depends:(.*)$", text, re.M)[1]
names = [re.sub(r"\s*[(\[<].*", "", d).strip() for d in deps.split(",")]
print(" ".join(n for n in names if n))
EOF
}

# TARGET, made once and cached (TARGET.complete): a copy of the base rootfs with `apt-get install ARGS...` run in it.
derive_rootfs() {
    local target=$1 name=$2
    shift 2
    [ -e "$target.complete" ] && return 0
    log "making the $name $target ($*)"
    rm -rf "$target" "$target.tmp"
    cp -a --reflink=auto "$(base_rootfs)" "$target.tmp"
    nspawn "$target.tmp" sh -c "apt-get update -q && apt-get install -y -q $* && apt-get clean" \
        >"$CACHE/$name-$SUITE.log" 2>&1 || { tail -20 "$CACHE/$name-$SUITE.log" >&2; die "$name"; }
    mv "$target.tmp" "$target"
    echo "$*" >"$target.complete"
}

# $CACHE/build-KEY: the base plus build-essential, the Build-Depends, and the release's own lintian and piuparts
# (the package is judged by the tools of the release it is for); keyed by the release and that package list.
build_chroot() {
    local base pkgs key chroot
    base=$(base_rootfs)
    pkgs="build-essential lintian piuparts dpkg-dev $(build_depends)"
    pkgs=${pkgs//debhelper-compat/debhelper}
    key=$(printf '%s %s %s' "$SUITE" "$(cat "$base.complete")" "$pkgs" | sha256sum | cut -c1-12)
    chroot=$CACHE/build-$key
    # shellcheck disable=SC2086
    derive_rootfs "$chroot" build-chroot --no-install-recommends $pkgs
    echo "$chroot"
}

# $CACHE/wheelhouse-<hash>: every file of requirements.lock the build needs (packaging/wheelhouse.py), for the
# Python of every supported release: one wheelhouse, hence one orig-wheels tarball shared by all releases' builds.
wheelhouse() {
    local key dir python pythons
    pythons=$(awk '!/^#/ && NF { print $3 }' "$RELEASES" | sort -u | xargs)
    key=$(cat "$ROOT/requirements.lock" "$ROOT/packaging/wheelhouse.py" <(echo "$pythons") | sha256sum | cut -c1-16)
    dir=$CACHE/wheelhouse-$key
    if [ ! -e "$dir/SHA256SUMS" ]; then
        # Any Python with pip will do (the tags are explicit): the project's .venv, else python3.
        python=$ROOT/.venv/bin/python
        [ -x "$python" ] || python=python3
        log "downloading the wheelhouse into $dir"
        # shellcheck disable=SC2086
        "$python" "$ROOT/packaging/wheelhouse.py" "$dir" "$(dpkg --print-architecture)" $pythons >"$CACHE/wheelhouse.log" 2>&1 \
            || { tail -20 "$CACHE/wheelhouse.log" >&2; die "wheelhouse"; }
    fi
    echo "$dir"
}

# Copy the tree as git would commit it (tracked files plus new files that are not ignored: no .venv, caches,
# dist) to $1, normalized for a reproducible build: every mtime set to $2 (SOURCE_DATE_EPOCH), modes u+rw go+r.
copy_tree() {
    local dest=$1
    mkdir -p "$dest"
    if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
            [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$dest"
    else
        tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=dist --exclude='*cache*' --exclude=.hypothesis \
            --exclude=.benchmarks --exclude=__pycache__ -cf - . | tar -xf - -C "$dest"
    fi
}

normalize_tree() {
    find "$1" -exec touch -h -d "@$2" {} +
    chmod -R u+rwX,go+rX,go-w "$1"
}

# A digest of a tree's names, modes and contents: two builds of trees with the same digest must be identical.
tree_hash() {
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
}
