"""The demo's tour of a running devnet (`inferad devnet up`): what a newcomer should see.

    python scripts/tour.py DEVNET_DIR/devnet.json

1. a job from the CLI, streamed; 2. a chat job from the official OpenAI
client, streamed; 3. the verification verdict of the CLI job (after it
expires: the draw waits for the first block after expiry); 4. the epoch's
settlement and the worker's claim on chain.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INFERAD = [sys.executable, "-m", "cli"]


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def cli(*args: str, capture: bool = True) -> str:
    proc = subprocess.run([*INFERAD, *args], cwd=ROOT, text=True, capture_output=capture, timeout=300)
    if proc.returncode:
        raise SystemExit(f"`inferad {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def wait(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")


def main() -> None:
    net = json.loads(Path(sys.argv[1]).read_text())
    node1, client = net["nodes"][0]["home"], net["client_home"]
    names = {n["peer_id"]: n["name"] for n in net["nodes"]}

    say("1. a signed job from the CLI, through node1's gateway")
    job = json.loads(cli("submit", "--home", client, "--node-home", node1, "The three largest cities of France are",
                         "--max-tokens", "24", "--max-price", "1000", "--ttl", "10", "--json"))
    result = job["result"]
    print(f"{result['text'].strip()}\n-> job {job['job_id'][:16]}…, run by {names[result['worker']]}, "
          f"{result['usage']['completion_tokens']} tokens, worker signature valid")

    say("2. a streamed chat job from the official OpenAI client, to node1's HTTP API")
    from openai import OpenAI

    openai = OpenAI(base_url=net["api"], api_key=net["api_key"])
    print(f"models: {[m.id for m in openai.models.list()]}")
    stream = openai.chat.completions.create(model="gemma-3-270m", stream=True, max_tokens=24,
                                            temperature=0,
                                            messages=[{"role": "user", "content": "Name three rivers in Europe."}],
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.model_extra.get("inferad"):
            info = chunk.model_extra["inferad"]
            print(f"\n-> job {info['job_id'][:16]}… run by {names.get(info['worker'], info['worker'])}", end="")
        if chunk.usage:
            print(f", {chunk.usage.completion_tokens} tokens (prompt {chunk.usage.prompt_tokens})")

    say("3. the CLI job's verification: drawn at the first block after it expired, re-scored by peers")

    def verdict():
        record = json.loads(cli("jobs", "--home", node1, job["job_id"], "--json"))[0]
        v = record.get("verification") or {}
        return v if v.get("status") in ("valid", "invalid", "not drawn") else None

    v = wait("the verdict", verdict, 120)
    print(f"drawn: {v.get('drawn')} (draw {v.get('draw')} < probability {v.get('probability')}), beacon block "
          f"{v.get('beacon_block')}, outcome: {v['status']}")
    for a in v.get("attestations", []):
        m = a["metrics"]
        print(f"  {names.get(a['verifier'], a['verifier'])}: {a['verdict']} — {a['reason']} "
              f"({m['positions']} positions re-scored in {m['elapsed_ms']} ms)")

    say(f"4. settlement (epochs of {net['epoch_seconds']} s) and the worker's claim")
    worker = next(n for n in net["nodes"] if n["peer_id"] == result["worker"])

    def claimable():
        status = json.loads(cli("chain", "status", "--home", worker["home"], "--chain", net["chain"], "--json"))
        return status if status.get("claimable_wei") else None

    status = wait("the settlement", claimable, 180)
    print(f"{worker['name']}: last settled epoch {status['last_settled_epoch']}, claimable "
          f"{status['claimable_wei']} wei")
    print(cli("chain", "claim", "--home", worker["home"], "--chain", net["chain"]).strip())
    client_status = json.loads(cli("chain", "status", "--home", client, "--chain", net["chain"], "--json"))
    print(f"client deposit now {client_status['deposit_wei']} wei (charged per token at the price it signed)")


if __name__ == "__main__":
    main()
