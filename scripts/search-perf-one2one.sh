#!/usr/bin/env bash
# Usage: scripts/search-perf-one2one.sh NATTERD OUT_PREFIX [NATTERD_FLAG ...]
#
# Measures the message path beside the search indexer (docs/PERFORMANCE.md
# "Search (issue 16)"). Starts NATTERD (a release natterd) with natter-bench's
# flags plus the extra NATTERD_FLAGs (e.g. `--search off`) on free loopback
# ports, runs target/release/natter-bench one2one --server against it, and
# samples natterd's natter_search_* metrics every 0.5 s into OUT_PREFIX.lag
# (columns: unix time, lag_messages, lag_seconds, observed_total, docs; "-"
# where natterd has no search) while the load runs and afterwards until the
# index has caught up (lag 0) or CATCH_UP_S has passed. Then it stops natterd
# and prints its data dir (kept, for `natterd reindex`).
#
# Environment: DURATION (default 10s), RATE (open-loop msgs/s; default: closed
# loop), CATCH_UP_S (default 60), BENCH_FLAGS (more natter-bench flags).
# Writes OUT_PREFIX.json (the bench's JSON), .txt (its stdout), .series.csv
# (its per-second series) and .lag.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
natterd=$1; out=$2; shift 2
duration=${DURATION:-10s}; catch_up=${CATCH_UP_S:-60}
work=$(mktemp -d /tmp/search-perf.XXXX)
NATTER_LOG=error "$natterd" --data-dir "$work/data" --cores 2 --http-port 0 --tcp-port 0 --tls-port 0 \
  --ws-port 0 --quic-port off --argon2-memory-kib 8 --argon2-iterations 1 --auth-rate-limit 1000000 \
  --send-rate-limit 1000000 --user-write-rate-limit 1000000 --friend-request-rate-limit 1000000 \
  "$@" >"$work/out" 2>"$work/err" &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null && wait "$pid" || true; }
trap stop EXIT
for _ in $(seq 600); do grep -q '^NATTERD_READY ' "$work/out" 2>/dev/null && break; sleep 0.1; done
http=$(sed -n 's/^NATTERD_READY //p' "$work/out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http"])')
# The sampler ends by itself: when natterd stops answering, or once the load is
# over (the flag file) and the lag is 0, or CATCH_UP_S after the load.
python3 - "$http" "$out.lag" "$work/load-done" "$catch_up" <<'PY' &
import os, sys, time, urllib.request
http, path, done_flag, catch_up = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
done_at = None
with open(path, "w") as f:
    while True:
        try:
            t = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
        except Exception:
            break
        vals = {l.split()[0]: l.split()[1] for l in t.splitlines()
                if l.startswith("natter_search_") and not l.startswith("#")}
        lag = vals.get("natter_search_lag_messages", "-")
        f.write(f"{time.time():.2f} {lag} {vals.get('natter_search_lag_seconds','-')} "
                f"{vals.get('natter_search_observed_total','-')} {vals.get('natter_search_docs','-')}\n")
        f.flush()
        if done_at is None and os.path.exists(done_flag):
            done_at = time.time()
        if done_at is not None and (lag in ("-", "0") or time.time() - done_at > catch_up):
            break
        time.sleep(0.5)
PY
sampler=$!
rate=()
[ -n "${RATE:-}" ] && rate=(--rate "$RATE")
# shellcheck disable=SC2086 # BENCH_FLAGS is a list of words on purpose
"$root/target/release/natter-bench" one2one --server "http://$http" --pid "$pid" --duration "$duration" \
  "${rate[@]}" --series "$out.series.csv" --json "$out.json" ${BENCH_FLAGS:-} > "$out.txt"
touch "$work/load-done"
wait "$sampler" || true
stop
trap - EXIT
echo "$work"
