"""``inferad devnet up``: a whole network on this machine, for development and the demo.

anvil (1 s blocks) with the registry deployed, N real node processes on
127.0.0.1 with free ports (node1 is the bootstrap, the oracle and serves the
HTTP API), every node staked, a client home and node1's own account funded
with deposits, and an API key.  Everything lives in one directory, wiped at
the next ``up`` (only a directory this command created is ever wiped), and
``devnet.json`` there says where everything is.  Stopping (Ctrl-C or
SIGTERM) stops every process it started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = ".inferad-devnet"
STAKE_ETH = 10
DEPOSIT_ETH = 1
ETH = 10**18
# Every node of a devnet is on 127.0.0.1, one IP: gossip's IP-colocation
# (eclipse) protection, on by default for the internet, would score them all
# down.  The context window keeps its default (trained, capped by memory).
ONE_MACHINE_ARGS = ("--ip-colocation-limit", "0")


class DevnetError(Exception):
    """The devnet cannot start; the message says why."""


@dataclass
class Devnet:
    directory: Path
    nodes: int = 3
    epoch_seconds: int = 20
    api_max_price: int = 1000
    say: object = print  # progress lines
    config: dict = field(default_factory=dict)  # config.toml keys set on every node (tests shorten timeouts)
    anvil: object = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def home(self, name: str) -> Path:
        return self.directory / name

    @property
    def names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def prepare(self) -> None:
        d = self.directory
        if d.exists() and any(d.iterdir()):
            if not (d / MARKER).exists():
                raise DevnetError(f"{d} is not empty and was not made by `inferad devnet up`; choose another --dir")
            shutil.rmtree(d)
        (d / "logs").mkdir(parents=True)
        (d / MARKER).write_text("made by `inferad devnet up`; wiped by the next one\n")

    def up(self) -> dict:
        from chain.contract import Registry
        from chain.devnet import Anvil, deploy
        from inferad.apikeys import ApiKeys
        from inferad.home import Home

        self.prepare()
        homes = {name: Home(self.home(name)) for name in [*self.names, "client"]}
        for home in homes.values():
            home.ensure()
            text = home.config_path.read_text()
            for key, value in self.config.items():
                text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
                if not found:
                    raise DevnetError(f"config.toml has no key {key}")
            home.config_path.write_text(text)
        self.say(f"anvil: starting a local chain (1 s blocks), state in {self.directory}")
        self.anvil = Anvil(state=self.directory / "anvil-state.json", block_time=1)
        info = deploy(self.anvil.rpc_url, oracle=homes["node1"].eth_address, epoch_seconds=self.epoch_seconds,
                      fund=[h.eth_address for h in homes.values()])
        chain_json = self.directory / "chain.json"
        info.save(chain_json)
        self.say(f"chain: InferadRegistry at {info.contract}, epochs of {self.epoch_seconds} s")
        w3 = info.web3()
        for name in self.names:
            home = homes[name]
            Registry(w3, info.contract, home.eth_account()).register(bytes(home.node_key.verify_key),
                                                                     STAKE_ETH * ETH)
            self.say(f"{name}: staked {STAKE_ETH} ETH with its node key")
        for name in ("client", "node1"):  # node1 pays for the jobs made through its HTTP API
            Registry(w3, info.contract, homes[name].eth_account()).deposit(DEPOSIT_ETH * ETH)
            self.say(f"{name}: deposited {DEPOSIT_ETH} ETH to pay for jobs")
        api_key, _ = ApiKeys(homes["node1"].path / "apikeys.json").create("devnet")
        node_infos = [self.start_node("node1", chain_json, first=True)]
        for name in self.names[1:]:
            node_infos.append(self.start_node(name, chain_json, bootstrap=node_infos[0]["addrs"][0]))
        self.wait_converged(homes["node1"], {i["peer_id"] for i in node_infos})
        summary = {
            "dir": str(self.directory), "chain": str(chain_json), "rpc_url": info.rpc_url,
            "contract": info.contract, "epoch_seconds": self.epoch_seconds,
            "api": node_infos[0]["api"] + "/v1", "api_key": api_key, "client_home": str(homes["client"].path),
            "nodes": [{"name": name, "home": str(homes[name].path), "peer_id": i["peer_id"], "addr": i["addrs"][0],
                       "eth": homes[name].eth_address, "role": "bootstrap, oracle, API" if name == "node1"
                       else "worker", "log": str(self.directory / "logs" / f"{name}.log")}
                      for name, i in zip(self.names, node_infos, strict=True)],
        }
        (self.directory / "devnet.json").write_text(json.dumps(summary, indent=2) + "\n")
        os.chmod(self.directory / "devnet.json", 0o600)  # holds the API key
        return summary

    def node_args(self, name: str, chain_json: Path, *, first: bool = False, bootstrap: str | None = None) -> list[str]:
        """The ``inferad start`` arguments (after ``start``) of node ``name``: 127.0.0.1, gossip's
        IP-colocation protection off (one machine), the default context window."""
        home = self.home(name)
        listen = "/ip4/127.0.0.1/tcp/0"
        try:  # a restart keeps its port, so peers that knew it (bootstrap address included) find it again
            listen = json.loads((home / "node.json").read_text())["addrs"][0].split("/p2p/")[0]
        except (OSError, ValueError, KeyError, IndexError):
            pass
        args = ["--home", str(home), "--listen", listen, "--chain", str(chain_json), *ONE_MACHINE_ARGS,
                "--log-level", "info"]
        if first:
            return args + ["--oracle", "--api-port", "0", "--api-max-price", str(self.api_max_price)]
        return args + ["--bootstrap", bootstrap]

    def start_node(self, name: str, chain_json: Path, *, first: bool = False, bootstrap: str | None = None) -> dict:
        home = self.home(name)
        args = [sys.executable, "-m", "cli", "start",
                *self.node_args(name, chain_json, first=first, bootstrap=bootstrap)]
        log = open(self.directory / "logs" / f"{name}.log", "a")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
                                start_new_session=True)  # Ctrl-C reaches devnet, which stops nodes in order
        self.procs.append(proc)
        self.running[name] = proc
        self.say(f"{name}: starting (loads the model, measures its speed)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DevnetError(f"{name} exited with {proc.returncode}; see {log.name}")
            try:
                info = json.loads((home / "node.json").read_text())
                if info["pid"] == proc.pid:
                    self.say(f"{name}: up, peer {info['peer_id']}")
                    return info
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise DevnetError(f"{name} did not start within 120 s; see {log.name}")

    def wait_converged(self, home, peers: set[str]) -> None:
        import trio

        from inferad import control

        self.say(f"mesh: waiting until node1 hears all {len(peers)} nodes' adverts")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen = trio.run(lambda: control.ask(home.path / "control.sock", "peers"))
            if {p["peer_id"] for p in seen} >= peers:
                return
            time.sleep(0.5)
        raise DevnetError("the nodes did not all hear each other within 90 s; see the logs")

    def down(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None
