#!/usr/bin/env bash
# Usage: scripts/search-perf-one2one.sh NATTERD OUT_PREFIX — starts NATTERD (e.g. main's
# release natterd, or this branch's) with natter-bench's flags on free loopback ports, runs
# target/release/natter-bench one2one --server against it for 10 s, samples natter_search_*
# every 0.5 s into OUT_PREFIX.lag (time lag_messages lag_seconds observed_total docs; "-"
# for a natterd without search), stops it, prints its data dir (kept, for `natterd reindex`).
# docs/PERFORMANCE.md "Search (issue 16)" has the figures this produced.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
natterd=$1; out=$2
work=$(mktemp -d /tmp/search-perf.XXXX)
NATTER_LOG=error "$natterd" --data-dir "$work/data" --cores 2 --http-port 0 --tcp-port 0 --tls-port 0 \
  --ws-port 0 --quic-port off --argon2-memory-kib 8 --argon2-iterations 1 --auth-rate-limit 1000000 \
  --send-rate-limit 1000000 --user-write-rate-limit 1000000 --friend-request-rate-limit 1000000 \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 600); do grep -q '^NATTERD_READY ' "$work/out" 2>/dev/null && break; sleep 0.1; done
http=$(sed -n 's/^NATTERD_READY //p' "$work/out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http"])')
python3 - "$http" "$out.lag" <<'PY' &
import sys, time, urllib.request
http, path = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    while True:
        try:
            t = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
        except Exception:
            break
        vals = {l.split()[0]: l.split()[1] for l in t.splitlines() if l.startswith("natter_search_") and not l.startswith("#")}
        f.write(f"{time.time():.2f} {vals.get('natter_search_lag_messages','-')} {vals.get('natter_search_lag_seconds','-')} {vals.get('natter_search_observed_total','-')} {vals.get('natter_search_docs','-')}\n"); f.flush()
        time.sleep(0.5)
PY
sampler=$!
"$root/target/release/natter-bench" one2one --server "http://$http" --duration 10s --json "$out.json" > "$out.txt"
sleep 3  # let the sampler see the lag just after the run
kill $sampler 2>/dev/null || true
kill -TERM $pid; wait $pid || true
echo "$work"
