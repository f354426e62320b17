#!/usr/bin/env bash
# Smoke run of every fuzz target (fuzz/README.md): builds the cargo-fuzz targets on the stable
# toolchain and runs each for a short while from its checked-in corpus. Fails on the first crash,
# printing the crashing input (base64) so it can be reproduced from the log.
#
# Usage: scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]      (default 20, or $FUZZ_SECONDS)
#   FUZZ_SANITIZER=none (default) | address   address = ASan, through RUSTC_BOOTSTRAP=1
#   FUZZ_TARGETS="session http_request"         a subset (default: all five)
#
# Cost on a 2-core machine: installing cargo-fuzz if missing ~40 s; a cold build of the targets
# ~2.5 min (-s none; ASan similar); then SECONDS_PER_TARGET for each of the five targets. New
# corpus entries go to a temporary directory, never into fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-${FUZZ_SECONDS:-20}}
sanitizer=${FUZZ_SANITIZER:-none}
read -r -a targets <<<"${FUZZ_TARGETS:-frame_decoder frame_bodies session http_request store_records}"
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
start=$(date +%s)
step() { echo; echo "=== $* ($(($(date +%s) - start))s)"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

case "$sanitizer" in
    none) ;;
    address) export RUSTC_BOOTSTRAP=1 ;; # -Zsanitizer on the stable toolchain
    *) echo "FUZZ_SANITIZER must be none or address" >&2; exit 2 ;;
esac
# One target dir per mode, so that switching modes does not rebuild everything.
build=(-s "$sanitizer" --target-dir "target/$sanitizer")

cd fuzz
step "cargo fuzz build -s $sanitizer"
cargo fuzz build "${build[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    case "$target" in
        frame_decoder | frame_bodies | session) dict=(-dict=dict/frame.dict) ;;
        # Under ASan, leak checks would rescan the heap after every input (the store grows).
        http_request) dict=(-dict=dict/http.dict -detect_leaks=0) ;;
        *) dict=() ;;
    esac
    step "$target for ${seconds}s"
    mkdir -p "$work/$target"
    # First corpus dir: where libFuzzer writes new inputs (scratch); second: the checked-in seeds.
    if ! cargo fuzz run "${build[@]}" "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" \
        -artifact_prefix="$work/$target-" >"$work/$target.log" 2>&1; then
        tail -n 60 "$work/$target.log"
        for crash in "$work/$target"-*; do
            [ -f "$crash" ] || continue
            echo "--- crashing input $(basename "$crash") (base64):"
            base64 -w0 "$crash"
            echo
        done
        echo "FAIL: $target crashed. Reproduce: save the input above, then" >&2
        echo "  (cd fuzz && cargo fuzz run ${build[*]} $target FILE); minimise with cargo fuzz tmin;" >&2
        echo "  fix, and keep the input in fuzz/regressions/$target/ (fuzz/README.md)." >&2
        exit 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|stat::average_exec_per_sec|stat::peak_rss_mb' "$work/$target.log" || true
done
step "fuzz smoke passed"
