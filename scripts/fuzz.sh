#!/usr/bin/env bash
# Run one coverage-guided fuzz target with AFL++ on stable Rust.
#
#   scripts/fuzz.sh TARGET SECONDS [--save]
#   scripts/fuzz.sh --list
#
# Builds the target with `cargo afl` (installs cargo-afl and builds AFL++
# the first time), seeds it from the committed corpus, runs it for SECONDS
# on one core, then prints one line of figures:
#   target=T seconds=S execs=N execs_per_sec=R corpus=C coverage=P% crashes=X hangs=H
# Crashes and hangs stay under fuzz/out/TARGET/default/{crashes,hangs} and
# make the script exit 1. With --save, new queue entries that add coverage
# (afl-cmin over the old corpus plus the queue) are copied into the
# committed corpus, which `cargo test` replays.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# target -> committed corpus directory
declare -A CORPUS=(
  [http_request]=l7/fuzz/corpus/http_request
  [http_response]=l7/fuzz/corpus/http_response
  [sse]=l7/fuzz/corpus/sse
  [mcp]=l7/fuzz/corpus/mcp
  [jwt]=l7/fuzz/corpus/jwt
  [tls_deframe]=tls/fuzz/corpus/deframe
  [tls_handshake]=tls/fuzz/corpus/handshake
  [tls_records]=tls/fuzz/corpus/records
  [tcp_ingress]=tcp/fuzz/corpus/ingress
  [steer]=dp/fuzz/corpus/steer
  [l7_sim]=driver/fuzz/corpus/sim
  [config]=ctl/fuzz/corpus/config
)

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${!CORPUS[@]}" | sort
  exit 0
fi
if [[ $# -lt 2 ]]; then
  echo "usage: scripts/fuzz.sh TARGET SECONDS [--save]   (scripts/fuzz.sh --list)" >&2
  exit 2
fi
TARGET=$1
SECONDS_TO_RUN=$2
SAVE=${3:-}
if [[ -z "${CORPUS[$TARGET]:-}" ]]; then
  echo "fuzz: unknown target '$TARGET'; targets: $(printf '%s ' "${!CORPUS[@]}")" >&2
  exit 2
fi
if ! [[ "$SECONDS_TO_RUN" =~ ^[0-9]+$ ]] || (( SECONDS_TO_RUN < 1 )); then
  echo "fuzz: SECONDS must be a positive integer, not '$SECONDS_TO_RUN'" >&2
  exit 2
fi
SEEDS=$ROOT/${CORPUS[$TARGET]}
if ! compgen -G "$SEEDS/*" >/dev/null; then
  echo "fuzz: the corpus $SEEDS is empty or missing" >&2
  exit 2
fi

if ! command -v cargo-afl >/dev/null; then
  echo "fuzz: installing cargo-afl (once)" >&2
  cargo install cargo-afl --locked --version '^0.18'
fi
# AFL++ itself is built from the afl crate's sources, once per rustc.
if ! cargo afl config --help >/dev/null 2>&1 || ! compgen -G "$HOME/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz" >/dev/null; then
  cargo afl config --build
fi

cd fuzz
cargo afl build --release --bin "$TARGET" >&2
BIN=$ROOT/fuzz/target/release/$TARGET
OUT=$ROOT/fuzz/out/$TARGET
rm -rf "$OUT"
mkdir -p "$OUT"

# This VM: no CPU frequency governor, and core dumps may go to a pipe.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_QUIET=1
# FUZZ_CPU=N binds the fuzzer to CPU N; by default it is not bound.
BIND=()
if [[ -n "${FUZZ_CPU:-}" ]]; then
  BIND=(-b "$FUZZ_CPU")
else
  export AFL_NO_AFFINITY=1
fi
cargo afl fuzz -i "$SEEDS" -o "$OUT" -V "$SECONDS_TO_RUN" -t 1000 "${BIND[@]}" -- "$BIN" \
  > "$OUT/afl.log" 2>&1 || { tail -20 "$OUT/afl.log" >&2; echo "fuzz: afl-fuzz failed" >&2; exit 1; }

STATS=$OUT/default/fuzzer_stats
stat() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$STATS"; }
CRASHES=$(stat saved_crashes)
HANGS=$(stat saved_hangs)
echo "target=$TARGET seconds=$(stat run_time) execs=$(stat execs_done)" \
  "execs_per_sec=$(stat execs_per_sec) corpus=$(stat corpus_count)" \
  "coverage=$(stat bitmap_cvg) edges=$(stat edges_found)/$(stat total_edges)" \
  "crashes=$CRASHES hangs=$HANGS"

if [[ "$SAVE" == "--save" ]]; then
  MIN=$OUT/min
  # The bash afl-cmin: `cargo afl cmin` (the Python one) finds no tuples
  # in afl.rs-instrumented binaries here.
  AFL_BIN=$(dirname "$(compgen -G "$HOME/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz" | head -1)")
  AFL_PATH=$AFL_BIN AFL_SKIP_CPUFREQ=1 "$AFL_BIN/afl-cmin.bash" -i "$OUT/default/queue" -o "$MIN" -- "$BIN" >/dev/null 2>&1 || true
  added=0
  known=$(find "$SEEDS" -type f -exec sha256sum {} + | cut -c1-64 | sort -u)
  for f in "$MIN"/*; do
    [[ -f "$f" ]] || continue
    sum=$(sha256sum "$f" | cut -c1-64)
    # Keep only small inputs the committed seeds do not already hold.
    if [[ $(stat -c %s "$f") -le 4096 ]] && ! grep -qx "$sum" <<<"$known"; then
      cp "$f" "$SEEDS/afl-${sum:0:16}"
      added=$((added + 1))
    fi
  done
  echo "fuzz: saved $added new corpus entries into ${CORPUS[$TARGET]}" >&2
fi

if [[ "$CRASHES" != "0" || "$HANGS" != "0" ]]; then
  echo "fuzz: findings in $OUT/default/crashes and $OUT/default/hangs" >&2
  exit 1
fi
