#!/usr/bin/env bash
# The main job, end to end, on a 3-node devnet (anvil + contract + oracle):
# a CLI job, a streamed OpenAI-client job, the verification verdict, the
# epoch settlement and a claim.  Stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
INFERAD=.venv/bin/inferad
DIR=demo-devnet

printf '\n\033[1m== 0. inferad devnet up --nodes 3 --dir %s\033[0m\n' "$DIR"
rm -f "$DIR/devnet.json"
$INFERAD devnet up --nodes 3 --dir "$DIR" --epoch-seconds 15 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 1800); do
    [ -f "$DIR/devnet.json" ] && break
    kill -0 $PID 2>/dev/null || { echo "the devnet did not start"; exit 1; }
    sleep 0.1
done
[ -f "$DIR/devnet.json" ] || { echo "the devnet did not start within 3 minutes"; exit 1; }
sleep 1  # let it print its table

.venv/bin/python scripts/tour.py "$DIR/devnet.json"

printf '\n\033[1m== 5. stop the devnet (every node finishes its jobs, then anvil stops)\033[0m\n'
kill -TERM $PID
wait $PID
trap - EXIT
