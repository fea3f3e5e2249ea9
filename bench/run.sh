#!/usr/bin/env bash
# tagway vs nginx, side by side in the same run (see README.md beside this file).
#
#   bench/run.sh            # 3 runs x 10 s per measurement, medians and ratios
#   bench/run.sh 5 5        # 5 runs x 5 s
#
# Needs nginx, wrk, h2load (apt-get install nginx-light wrk nghttp2-client) and a release
# build (made here if missing). Everything listens on 127.0.0.1; every process started is
# stopped by PID.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runs=${1:-3}
secs=${2:-10}
(cd "$here/.." && cargo build --release --locked --quiet)
export CANDIDATE_CMD="$here/tagway-candidate.sh"
export CANDIDATE_PORT=${CANDIDATE_PORT:-19081}
export CANDIDATE_TLS_PORT=${CANDIDATE_TLS_PORT:-19443}
export TARGETS=${TARGETS:-direct nginx-proxy candidate nginx-tls-h2 cand-tls-h2}
export TAGWAY_LOG=${TAGWAY_LOG:-warn}
exec "$here/repeat.sh" "$runs" "$secs"
