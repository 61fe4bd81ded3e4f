#!/usr/bin/env bash
# Run a command with every core busy: one busy loop per core (plus LOAD_EXTRA more) runs for
# the whole command and is stopped by pid at the end, however the command ends.
# Used by `make test-loaded` to prove that no test depends on the machine being quiet.
set -euo pipefail
cores=$(nproc)
extra=${LOAD_EXTRA:-0}
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 $((cores + extra))); do
  python3 -c 'while True: pass' &
  pids+=($!)
done
echo "loaded.sh: ${#pids[@]} busy loops on $cores cores (pids ${pids[*]})" >&2
"$@"
