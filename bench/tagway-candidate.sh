#!/usr/bin/env bash
# Runs tagway as the bench candidate (see bench/run.sh): the run's certificate as the default
# pair, the plain-relay rules, the origin from the bench environment. Stays in the foreground.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
certs="$BENCH_WORK/tagway-certs"
mkdir -p "$certs"
cp "$BENCH_CERT" "$certs/default.crt"
cp "$BENCH_KEY" "$certs/default.key"
exec "${TAGWAY_BIN:-$here/../target/release/tagway}" serve \
  --listen "127.0.0.1:$CANDIDATE_PORT" \
  --tls-listen "127.0.0.1:${CANDIDATE_TLS_PORT:-0}" \
  --admin-listen "${TAGWAY_BENCH_ADMIN:-off}" \
  --rules "${TAGWAY_BENCH_RULES:-$here/rules}" \
  --certs "$certs" \
  --upstream "origin=$BENCH_UPSTREAM_URL" \
  --spool "$BENCH_WORK/spool" \
  ${TAGWAY_BENCH_ARGS:-}
