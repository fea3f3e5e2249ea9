#!/usr/bin/env bash
# A cached vendor script served by tagway (script route, cache hit, gzip variant from memory)
# against nginx serving the same bytes as a static file with gzip_static, alternating in the
# same run; then what a cold request costs (fetch, rewrite, compress) and the br sizes.
#
#   bench/script-cache.sh          # 3 rounds x 8 s each
#   bench/script-cache.sh 5 10     # 5 rounds x 10 s
#
# Needs nginx, wrk, curl, python3 and a release build (made here if missing). Everything
# listens on 127.0.0.1 (ports 18701-18704, or BASE_PORT..+3); every process started is
# stopped by its PID.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=${1:-3}
secs=${2:-8}
base=${BASE_PORT:-18701}
up_port=$base tw_port=$((base + 1)) admin_port=$((base + 2)) nginx_port=$((base + 3))
(cd "$here/.." && cargo build --release --locked --quiet)
tagway="$here/../target/release/tagway"
dir=$(mktemp -d)
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$dir/nginx/nginx.pid" ]; then kill "$(cat "$dir/nginx/nginx.pid")" 2>/dev/null || true; fi
  sleep 0.5
  rm -rf "$dir"
}
trap stop EXIT

# The vendor: a 400 KB gtag.js stand-in behind a static file server.
mkdir -p "$dir/up/gtag" "$dir/rules" "$dir/nginx/html/gtag" "$dir/nginx/logs"
"$here/payloads/gen-gtag-js.sh" 409600 > "$dir/up/gtag/js"
python3 -m http.server "$up_port" --bind 127.0.0.1 --directory "$dir/up" > /dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$up_port/gtag/js" && break; sleep 0.1; done
cat > "$dir/rules/00-site.toml" <<EOF
[site]
hosts = ["127.0.0.1"]
origins = ["http://127.0.0.1:*"]
EOF
cat > "$dir/rules/10-script.toml" <<EOF
[upstreams.vendor]
url = "http://127.0.0.1:$up_port"

[[route]]
name = "gtag"
path = "/gtag/js"
methods = ["GET"]
upstream = "vendor"
codec = "opaque"
scan = false
script = { rewrite = { "www.google-analytics.com" = "{host}", "region1.google-analytics.com" = "{host}", "www.googletagmanager.com" = "{host}" }, ttl = "1h", stale = "1d" }
EOF
TAGWAY_LOG=warn "$tagway" --rules "$dir/rules" --listen "127.0.0.1:$tw_port" --tls-listen off \
  --admin-listen "127.0.0.1:$admin_port" --workers 2 &
tw_pid=$!
pids+=($tw_pid)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$admin_port/healthz" && break; sleep 0.1; done

url="http://127.0.0.1:$tw_port/gtag/js?id=G-BENCH"
echo "cold request (fetch + rewrite + gzip + br q9), then warm, then br after the q11 redo:"
curl -s -o /dev/null -w "  %header{tagway-cache}: %{http_code} in %{time_total}s, br %{size_download} bytes\n" -H 'Accept-Encoding: br' "$url"
curl -s -o /dev/null -w "  %header{tagway-cache}: %{http_code} in %{time_total}s, br %{size_download} bytes\n" -H 'Accept-Encoding: br' "$url"
sleep 3
curl -s -o /dev/null -w "  hit:  br %{size_download} bytes (quality 11)\n" -H 'Accept-Encoding: br' "$url"
curl -s -o /dev/null -w "  hit:  gzip %{size_download} bytes, identity " -H 'Accept-Encoding: gzip' "$url"
curl -s -o /dev/null -w "%{size_download} bytes\n" "$url"

# nginx serves the very bytes tagway serves, precompressed (gzip -9, as tagway's gzip).
curl -s -o "$dir/nginx/html/gtag/js" "$url"
gzip -9 -k "$dir/nginx/html/gtag/js"
cat > "$dir/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$nginx_port;
    root $dir/nginx/html;
    gzip_static on;
    location /gtag/ { default_type application/javascript; add_header Vary Accept-Encoding; add_header Cache-Control "public, max-age=3600"; }
  }
}
EOF
nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf"
sleep 0.5
nginx_pid=$(cat "$dir/nginx/nginx.pid")

# CPU ticks of a process and its children.
ticks() {
  local t=0 q f
  for q in $1 $(ps -o pid= --ppid "$1"); do
    read -r -a f < "/proc/$q/stat"
    t=$((t + f[13] + f[14]))
  done
  echo $t
}
hz=$(getconf CLK_TCK)
echo "wrk -t2 -c64 -d${secs}s, Accept-Encoding: gzip, $rounds rounds:"
for r in $(seq 1 "$rounds"); do
  for t in nginx tagway; do
    if [ $t = nginx ]; then u="http://127.0.0.1:$nginx_port/gtag/js"; p=$nginx_pid; else u=$url; p=$tw_pid; fi
    c0=$(ticks "$p")
    out=$(wrk -t2 -c64 -d"${secs}s" -H 'Accept-Encoding: gzip' "$u")
    c1=$(ticks "$p")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    echo "  round $r $t: $rps req/s, $(awk -v c=$((c1 - c0)) -v n="$reqs" -v hz="$hz" 'BEGIN { printf "%.1f", c / hz * 1e6 / n }') CPU us/req"
  done
done
