#!/usr/bin/env bash
# Queued delivery (README.md "Delivery"), measured in two parts:
#
#   latency     beacons (w1) to a vendor that takes 200 ms per answer: nginx relaying vs tagway
#               with the route queued. A paced load (lua/paced.lua: each of LAT_CONNS connections
#               waits BENCH_PACE_MS between requests), wrk --latency: p50/p99 as a browser sees them.
#   throughput  w1 of the core benchmark (anchors.sh, nginx-proxy and the candidate in each run):
#               tagway relaying, queued with batched fsync (10ms), queued with fsync per request.
#               A queued request is answered before it is delivered, so besides the requests
#               answered (accepted/s) it reports what the origin received during the same window
#               (delivered/s, nginx stub_status) and the spool backlog right after it
#               (tagway_spool_pending): a rate the delivery does not keep up with shows as a
#               backlog that grows, and only delivered/s is a sustainable rate.
#
#   bench/queue.sh              # 3 runs x 10 s per measurement
#   bench/queue.sh 5 5          # 5 runs x 5 s;  PARTS=latency or PARTS=throughput for one part
#
# Needs nginx, wrk, python3 (apt-get install nginx-light wrk). Everything listens on 127.0.0.1;
# every process started is stopped by PID. Results in bench/results/queue-<UTC time>/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runs=${1:-3}
secs=${2:-10}
PARTS=${PARTS:-latency throughput}
LAT_CONNS=${LAT_CONNS:-32}
export BENCH_PACE_MS=${BENCH_PACE_MS:-20}
ORIGIN_PORT=${ORIGIN_PORT:-18090}
NGINX_PORT=${NGINX_PORT:-18091}
TAGWAY_PORT=${TAGWAY_PORT:-18092}
ADMIN_PORT=${ADMIN_PORT:-19082}
out=${RESULTS_DIR:-$here/results/queue-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
for tool in nginx wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "queue.sh: '$tool' not found" >&2; exit 2; }
done
(cd "$here/.." && cargo build --release --locked --quiet)
bin="$here/../target/release/tagway"
w1_path="/g/collect?$(cat "$here/payloads/w1-query.txt")"

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-queue.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # wait_port PORT WHAT
  for _ in $(seq 150); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "queue.sh: $2 did not start on port $1" >&2; exit 1
}

# wrk's "Latency Distribution" value in ms.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.3f", v }'; }

latency() {
  python3 "$here/lib/slow_origin.py" "$ORIGIN_PORT" >"$work/origin.out" & pids+=($!)
  wait_port "$ORIGIN_PORT" "the slow origin"
  mkdir -p "$work/nginx-tmp"
  cat >"$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-tmp/body;
  proxy_temp_path $work/nginx-tmp/proxy;
  fastcgi_temp_path $work/nginx-tmp/fastcgi;
  uwsgi_temp_path $work/nginx-tmp/uwsgi;
  scgi_temp_path $work/nginx-tmp/scgi;
  upstream vendor { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { proxy_pass http://vendor; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
  TAGWAY_LOG=warn "$bin" serve --listen "127.0.0.1:$TAGWAY_PORT" --tls-listen off --admin-listen off \
    --rules "$here/rules-queue" --upstream "origin=http://127.0.0.1:$ORIGIN_PORT" \
    --spool "$work/spool" --delivery-concurrency 256 >"$work/tagway.log" 2>&1 & pids+=($!)
  wait_port "$NGINX_PORT" nginx
  wait_port "$TAGWAY_PORT" tagway
  tsv="$out/latency.tsv"
  printf 'run\ttarget\trps\tp50_ms\tp99_ms\trequests\tnon2xx\n' >"$tsv"
  for i in $(seq "$runs"); do
    for t in nginx-relay tagway-queue; do
      port=$NGINX_PORT; [ "$t" = tagway-queue ] && port=$TAGWAY_PORT
      wrk -t2 -c"$LAT_CONNS" -d"${secs}s" --latency -s "$here/lua/paced.lua" "http://127.0.0.1:$port$w1_path" >"$work/wrk.out"
      p50=$(awk '$1=="50%"{print $2}' "$work/wrk.out" | to_ms)
      p99=$(awk '$1=="99%"{print $2}' "$work/wrk.out" | to_ms)
      rps=$(awk '/^Requests\/sec/{print $2}' "$work/wrk.out")
      reqs=$(awk '/requests in/{print $1}' "$work/wrk.out")
      bad=$(awk '/Non-2xx/{print $NF}' "$work/wrk.out"); bad=${bad:-0}
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$t" "$rps" "$p50" "$p99" "$reqs" "$bad" | tee -a "$tsv"
    done
  done
  python3 - "$tsv" <<'PY' | tee "$out/latency.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("\n| beacon to a 200 ms vendor | req/s | p50 ms | p99 ms | non-2xx |\n|---|---|---|---|---|")
for t in ("nginx-relay", "tagway-queue"):
    r = [x for x in rows if x["target"] == t]
    med = lambda k: statistics.median(float(x[k]) for x in r)
    print(f"| {t} | {med('rps'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {sum(int(x['non2xx']) for x in r)} |")
print(f"\nmedians of {len(r)} runs")
PY
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  echo "slow origin answered $(cat "$work/origin.out") requests in all" | tee -a "$out/latency.md"
  cp "$work/nginx.err" "$work/tagway.log" "$out/" 2>/dev/null || true
}

throughput() {
  for mode in relay queue-batched queue-always; do
    case $mode in
      relay) rules=$here/rules; fsync=10ms ;;
      queue-batched) rules=$here/rules-queue; fsync=10ms ;;
      queue-always) rules=$here/rules-queue; fsync=always ;;
    esac
    echo "=== $mode"
    RESULTS_DIR="$out/$mode" WORKLOADS=w1 TARGETS="nginx-proxy candidate" \
      CANDIDATE_CMD="$here/tagway-candidate.sh" CANDIDATE_PORT=${CANDIDATE_PORT:-19081} \
      TAGWAY_BENCH_RULES="$rules" TAGWAY_BENCH_ARGS="--spool-fsync $fsync --spool-max-size 4GiB" \
      TAGWAY_BENCH_ADMIN="127.0.0.1:$ADMIN_PORT" \
      CANDIDATE_BACKLOG_CMD="curl -s --max-time 2 http://127.0.0.1:$ADMIN_PORT/metrics | awk '/^tagway_spool_pending /{print \$2}'" \
      TAGWAY_LOG=warn "$here/repeat.sh" "$runs" "$secs" >"$out/$mode.log" 2>&1 \
      || { echo "queue.sh: $mode failed, see $out/$mode.log" >&2; tail -5 "$out/$mode.log" >&2; exit 1; }
    grep -E '^w1 ' "$out/$mode.log" || true
  done
  python3 - "$out" "$runs" "$secs" <<'PY' | tee "$out/throughput.md"
import csv, statistics, sys
out, runs, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def rows(mode, i):
    return {r["target"]: r for r in csv.DictReader(open(f"{out}/{mode}/run-{i}.tsv"), delimiter="\t")}
def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
med = lambda xs: statistics.median(xs) if xs else None
print("\n| w1, 64 connections | accepted req/s | ÷ nginx-proxy (same run) | delivered/s (origin) | ÷ nginx-proxy | backlog growth in window | backlog after | p99 ms | tagway CPU µs/req |")
print("|---|---|---|---|---|---|---|---|---|")
res = {}
for mode in ("relay", "queue-batched", "queue-always"):
    rs = [rows(mode, i) for i in range(1, runs + 1)]
    ok = [r for r in rs if r.get("candidate", {}).get("status") == "ok" and r.get("nginx-proxy", {}).get("status") == "ok"]
    if not ok:
        print(f"| {mode} | no valid run | | | | | | | |"); continue
    c = lambda r, k: num(r["candidate"][k])
    rps = med([c(r, "rps") for r in ok])
    ratio = med([c(r, "rps") / num(r["nginx-proxy"]["rps"]) for r in ok])
    dl = [c(r, "origin_reqs") / secs for r in ok if c(r, "origin_reqs") is not None]
    dps = med(dl)
    dratio = med([c(r, "origin_reqs") / secs / num(r["nginx-proxy"]["rps"]) for r in ok if c(r, "origin_reqs") is not None])
    growth = med([c(r, "requests") - c(r, "origin_reqs") for r in ok if c(r, "origin_reqs") is not None])
    backlog = med([c(r, "backlog") for r in ok if c(r, "backlog") is not None])
    p99 = med([c(r, "p99_ms") for r in ok])
    cpu = med([c(r, "proxy_cpu_us") for r in ok])
    res[mode] = (rps, ratio, dps, dratio)
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    print(f"| {mode} | {rps:.0f} | {ratio:.2f} | {f(dps, '.0f')} | {f(dratio, '.2f')} | {f(growth, '.0f')} | {f(backlog, '.0f')} | {p99:.2f} | {cpu:.1f} |")
print(f"\nmedians of {runs} runs of {secs:.0f} s; delivered/s = requests the origin answered during the window / {secs:.0f} s")
if "relay" in res:
    r = res["relay"]
    for mode in ("queue-batched", "queue-always"):
        if mode not in res:
            continue
        q = res[mode]
        line = f"{mode} ÷ relay: accepted {q[0] / r[0]:.2f} (medians), {q[1] / r[1]:.2f} (each against nginx in its own runs)"
        if q[2] is not None and q[3] is not None:
            line += f"; delivered {q[2] / r[0]:.2f} (medians), {q[3] / r[1]:.2f} (against nginx)"
        print(f"\n{line}")
PY
}

for part in $PARTS; do
  case $part in
    latency) latency ;;
    throughput) throughput ;;
    *) echo "queue.sh: unknown part $part" >&2; exit 2 ;;
  esac
done
echo "results in $out"
