#!/usr/bin/env bash
# Builds the patched copies of registry crates that Cargo.toml's
# [patch.crates-io] points at: for every patches/<crate>+<version>.patch,
# fetch <crate>-<version>.crate from crates.io (or the local cargo cache),
# check it against patches/<crate>+<version>.sha256 (the registry checksum,
# as Cargo.lock had it before the patch), unpack it into
# .deps/<crate>-<version> and apply our diff. Idempotent: a copy whose stamp
# matches the patch is left alone, so cargo does not rebuild it.
#
# The repository holds only our diffs (see patches/README.md), never a copy
# of upstream code. scripts/setup.sh runs this; run it yourself after
# editing a patch.
set -euo pipefail
cd "$(dirname "$0")/.."

shopt -s nullglob
patches=(patches/*.patch)
((${#patches[@]})) || exit 0
mkdir -p .deps

for patch in "${patches[@]}"; do
    base=$(basename "$patch" .patch)           # smoltcp+0.13.1
    crate=${base%+*}
    version=${base#*+}
    dest=".deps/$crate-$version"
    stamp="$dest/.dpuproxy-patch"
    want=$(sha256sum "$patch" | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        continue
    fi
    sum_file="patches/$base.sha256"
    [[ -f $sum_file ]] || { echo "patch-deps: $sum_file is missing (the registry checksum of $crate $version)" >&2; exit 1; }
    checksum=$(tr -d ' \n' <"$sum_file")

    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    archive="$work/$crate-$version.crate"
    cached=""
    for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$version.crate"; do
        cached=$f # nullglob: no match, no iteration
        break
    done
    if [[ -n $cached ]] && echo "$checksum  $cached" | sha256sum -c --quiet - 2>/dev/null; then
        cp "$cached" "$archive"
    else
        echo "patch-deps: downloading $crate $version from crates.io"
        curl -fsSL --retry 3 -o "$archive" "https://static.crates.io/crates/$crate/$crate-$version.crate"
    fi
    if ! echo "$checksum  $archive" | sha256sum -c --quiet -; then
        echo "patch-deps: $crate-$version.crate does not match $sum_file; refusing to build from it" >&2
        exit 1
    fi
    tar -xzf "$archive" -C "$work"
    if ! patch -s -p1 -d "$work/$crate-$version" <"$patch"; then
        echo "patch-deps: $patch does not apply to $crate $version" >&2
        exit 1
    fi
    echo "$want" >"$work/$crate-$version/.dpuproxy-patch"
    rm -rf "$dest"
    mv "$work/$crate-$version" "$dest"
    rm -rf "$work"
    trap - EXIT
    echo "patch-deps: $dest ready ($patch applied)"
done
