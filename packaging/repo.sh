#!/usr/bin/env bash
# make repo: a signed apt repository of the packages make deb built, one suite per supported release.
#
#   [SUITE=trixie] packaging/repo.sh [--from DIR] [--out DIR]      (default: --from dist --out dist/repo)
#
# DIR/<release>/*.deb (every version there) go to OUT/pool/<release>/main/; apt-ftparchive (apt-utils) writes
# OUT/dists/<release>/main/binary-<arch>/Packages(.gz) and the Release file; gpg signs it (InRelease, Release.gpg);
# the public key is OUT/email-sync-archive-keyring.gpg (binary, for Signed-By:). Publish OUT over http(s) as is.
#
# The signing key: $EMAIL_SYNC_REPO_KEY, a file holding the maintainer's secret key (gpg --export-secret-keys,
# without a passphrase: keep that file root-only, e.g. a CI secret file). It is imported into a temporary gpg home
# that is removed on exit. Without it a throwaway test key is made once (cached, $CACHE/repo-test-key.asc) and used,
# with a warning: a repository signed with it is for tests only.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"

FROM=$DIST
OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --from) FROM=$(realpath "$2"); shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
OUT=${OUT:-$FROM/repo}
ARCH=$(dpkg --print-architecture)
ensure_host_tools

GNUPGHOME=$(mktemp -d)
export GNUPGHOME
trap 'gpgconf --kill all >/dev/null 2>&1; rm -rf "$GNUPGHOME"' EXIT
gpg_() { gpg --batch --quiet --no-tty "$@"; }

KEY_FILE=${EMAIL_SYNC_REPO_KEY:-}
if [ -z "$KEY_FILE" ]; then
    KEY_FILE=$CACHE/repo-test-key.asc
    if [ ! -s "$KEY_FILE" ]; then
        gpg_ --passphrase '' --quick-gen-key "email-sync throwaway test archive key <test@email-sync.invalid>" \
            ed25519 sign 1y
        (umask 077 && gpg_ --armor --export-secret-keys >"$KEY_FILE.tmp") && mv "$KEY_FILE.tmp" "$KEY_FILE"
        gpg_ --yes --delete-secret-and-public-key "$(gpg_ --list-keys --with-colons | awk -F: '/^fpr/ { print $10; exit }')"
    fi
    log "WARNING: no EMAIL_SYNC_REPO_KEY: signing with a THROWAWAY TEST KEY ($KEY_FILE). Fine for tests; for a real"
    log "WARNING: repository set EMAIL_SYNC_REPO_KEY to a file with the maintainer's secret signing key."
fi
[ -r "$KEY_FILE" ] || die "cannot read the signing key $KEY_FILE"
gpg_ --import <"$KEY_FILE" 2>/dev/null || die "no secret key in $KEY_FILE"
FINGERPRINT=$(gpg_ --list-secret-keys --with-colons | awk -F: '/^fpr/ { print $10; exit }')
[ -n "$FINGERPRINT" ] || die "no secret key in $KEY_FILE"

mkdir -p "$OUT"
for suite in $(requested_suites); do
    shopt -s nullglob
    debs=("$FROM/$suite"/*.deb)
    shopt -u nullglob
    [ ${#debs[@]} -gt 0 ] || die "no packages in $FROM/$suite: run make deb first"
    pool=pool/$suite/main/e/email-sync
    dists=$OUT/dists/$suite
    rm -rf "${OUT:?}/pool/$suite" "$dists"
    mkdir -p "$OUT/$pool" "$dists/main/binary-$ARCH"
    cp "${debs[@]}" "$OUT/$pool/"
    (cd "$OUT" && apt-ftparchive packages "pool/$suite") >"$dists/main/binary-$ARCH/Packages"
    gzip -9n <"$dists/main/binary-$ARCH/Packages" >"$dists/main/binary-$ARCH/Packages.gz"
    apt-ftparchive \
        -o APT::FTPArchive::Release::Origin=email-sync -o APT::FTPArchive::Release::Label=email-sync \
        -o APT::FTPArchive::Release::Suite="$suite" -o APT::FTPArchive::Release::Codename="$suite" \
        -o APT::FTPArchive::Release::Architectures="$ARCH" -o APT::FTPArchive::Release::Components=main \
        -o APT::FTPArchive::Release::Description="email-sync for Debian $(release_field "$suite" 2) ($suite)" \
        release "$dists" >"$OUT/Release.tmp"
    mv "$OUT/Release.tmp" "$dists/Release"
    gpg_ --yes --local-user "$FINGERPRINT" --clearsign -o "$dists/InRelease" "$dists/Release"
    gpg_ --yes --local-user "$FINGERPRINT" --armor --detach-sign -o "$dists/Release.gpg" "$dists/Release"
    log "$suite: $(grep -c '^Package:' "$dists/main/binary-$ARCH/Packages") package(s), $(sed -n 's/^Version: //p' \
        "$dists/main/binary-$ARCH/Packages" | xargs)"
done
gpg_ --export "$FINGERPRINT" >"$OUT/email-sync-archive-keyring.gpg"
# What apt will do with the published key (gpgv, as bookworm's apt does): every suite's InRelease verifies.
for suite in $(requested_suites); do
    gpgv --keyring "$OUT/email-sync-archive-keyring.gpg" "$OUT/dists/$suite/InRelease" 2>/dev/null \
        || die "$suite: InRelease does not verify with $OUT/email-sync-archive-keyring.gpg"
done
log "signed repository in $OUT (key $FINGERPRINT, public key $OUT/email-sync-archive-keyring.gpg)"
