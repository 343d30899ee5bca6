#!/usr/bin/env bash
# The main job, end to end: start a node, submit a signed job, show the
# worker-signed result read back from the node's LevelDB.
set -euo pipefail
cd "$(dirname "$0")/.."
INFERAD=.venv/bin/inferad
DIR=demo-home
NODE=$DIR/node
CLIENT=$DIR/client
mkdir -p "$DIR"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. a node home: Ed25519 keys (also the libp2p identity), an Ethereum keystore, config.toml"
$INFERAD init --home "$NODE"

say "2. start the node on 127.0.0.1 (serves gemma-3-270m through llama.cpp)"
rm -f "$NODE/node.json"
$INFERAD start --home "$NODE" --listen /ip4/127.0.0.1/tcp/0 > "$DIR/node.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    [ -f "$NODE/node.json" ] && break
    kill -0 $PID 2>/dev/null || { cat "$DIR/node.log"; exit 1; }
    sleep 0.1
done
[ -f "$NODE/node.json" ] || { echo "node did not start"; cat "$DIR/node.log"; exit 1; }
cat "$NODE/node.json"

say "3. submit a signed job; tokens stream as they are generated"
$INFERAD submit --home "$CLIENT" --node-home "$NODE" "The capital of France is" --max-tokens 24

say "4. the job and its worker-signed result, read back from the node's LevelDB"
$INFERAD jobs --home "$NODE"
$INFERAD jobs --home "$NODE" --json | .venv/bin/python -c '
import json, sys
job = json.load(sys.stdin)[-1]
r = job["result"]
job_id, status, worker, usage, timings = job["job_id"], job["status"], r["worker"], r["usage"], r["timings"]
print(f"job {job_id[:16]}…  status {status}  worker {worker}")
print("result hash", job["result_hash"])
print("worker signature valid:", job["worker_signature_valid"])
print(usage["completion_tokens"], "tokens; prompt", timings["prompt_ms"], "ms; decode", timings["decode_ms"], "ms")'

say "5. stop the node (SIGTERM: finishes running jobs, closes the database)"
kill -TERM $PID
wait $PID
trap - EXIT
tail -n 3 "$DIR/node.log"
