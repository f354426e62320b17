#!/usr/bin/env bash
# natter's fault and attack suite (issue 13). Item 2: the history checker (I1, I2, I3, I5)
# under kill -9 (20 per run), libfiu fdatasync/fsync/write errors, a full disk (tmpfs),
# a 256 MiB memory cgroup with 2,000 connections, and a TCP fault proxy (natter-chaos).
# Items 3 and 4 ("attacks"): every abuse attack with the honest client's latency
# (server/tests/abuse.rs) and the authorization matrix (server/tests/authz.rs), run as
# cargo tests. Each scenario prints one "N passed, N failed" line and its figures; the
# exit status is non-zero if any check failed or a scenario could not run.
#
#   scripts/chaos.sh                 # short mode (~3 minutes; scripts/test.sh runs it)
#   scripts/chaos.sh --full          # long mode (~15 minutes: 5-minute kill -9 and proxy runs)
#   scripts/chaos.sh kill9 flap      # some scenarios only (also with --full, --seed N)
#   scripts/chaos.sh attacks         # items 3 and 4 only
#   CHAOS_PROFILE=release scripts/chaos.sh --full   # against a release natterd
#
# fiu, diskfull and memcap need root (apt-get for fiu-utils, mount for the tmpfs, a
# memory cgroup); without it they are skipped, and said so, unless named explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${CHAOS_PROFILE:-debug}"
release=()
[ "$profile" = release ] && release=(--release)
args=()
named=0
attacks=0
for a in "$@"; do
    case "$a" in
        attacks) attacks=1; continue ;;
        --*|[0-9]*) ;;
        *) named=1 ;;
    esac
    args+=("$a")
done
# No scenario named: all of them, the attacks too.
if [ "$named" -eq 0 ] && [ "$attacks" -eq 0 ]; then
    attacks=2
fi
if [ "$(id -u)" -eq 0 ]; then
    scripts/chaos-setup.sh
elif [ "$named" -eq 0 ]; then
    echo "chaos.sh: not root: SKIPPING fiu, diskfull and memcap (they need apt-get, mount and a memory cgroup)"
    args+=(kill9 flap)
fi
status=0
if [ "$named" -eq 1 ] || [ "$attacks" -ne 1 ]; then
    # Two builds: `--bin natterd` would also filter natter-chaos's binary out of one.
    cargo build --locked -j2 "${release[@]}" -p natter-server --bin natterd
    cargo build --locked -j2 "${release[@]}" -p natter-chaos
    NATTERD="target/$profile/natterd" "target/$profile/natter-chaos" "${args[@]}" || status=$?
fi
if [ "$attacks" -ne 0 ]; then
    # Items 3 and 4 are end-to-end tests against a real natterd (one at a time: each
    # attack measures an honest client's latency and must not share the machine).
    for t in abuse authz; do
        log=$(mktemp)
        if cargo test --locked -j2 "${release[@]}" -p natter-server --test "$t" -- --test-threads 1 --nocapture \
            >"$log" 2>&1; then :; else status=1; fi
        grep -E '^abuse |^authz ' "$log" || true
        passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
        failed=$(grep -oE '[0-9]+ failed' "$log" | tail -1 | grep -oE '[0-9]+' || echo 0)
        [ -n "$passed" ] || passed=0
        [ -n "$failed" ] || failed=0
        if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
            echo "$t: did not run:"; tail -20 "$log"; failed=1; status=1
        fi
        echo "$t (issue 13 item $([ "$t" = abuse ] && echo 3 || echo 4)): $passed passed, $failed failed"
        rm -f "$log"
    done
fi
exit "$status"
