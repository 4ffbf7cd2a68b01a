#!/usr/bin/env bash
# .ci/run from a fresh clone of this repository's HEAD while another process holds
# port 8787 (dask's default dashboard port) and two CPU-bound processes run beside it:
# the suite must not depend on a free fixed port or a quiet machine.
# Usage: bash ci/stress.sh [CLONE_DIR]   (default: a new temporary folder)
set -u
ROOT="$(git rev-parse --show-toplevel)"
DIR="${1:-$(mktemp -d)/fastvi}"
git clone -q "$ROOT" "$DIR"
python3 -c "
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8787))
s.listen()
time.sleep(7200)
" &
HOLD=$!
python3 -c "while True: pass" &
B1=$!
python3 -c "while True: pass" &
B2=$!
trap 'kill $HOLD $B1 $B2 2>/dev/null' EXIT
sleep 1
cd "$DIR" && git log --oneline -1
start=$(date +%s)
CI=true bash .ci/run
rc=$?
echo "== .ci/run exit $rc after $(($(date +%s) - start)) s (port 8787 held, two burners)"
exit $rc
