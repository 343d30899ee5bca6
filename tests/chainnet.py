"""A network of homes on a real chain, for the integration tests that settle, stake and slash."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from chain.devnet import ANVIL
from tests.conftest import INFERAD, ROOT, NodeProcess, run_cli
from tests.test_mesh_integration import peer_ids, wait_for

NEEDS_CHAIN = pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")


def together(commands) -> None:
    """Run ``inferad`` commands side by side (each for its own home and account); all must succeed."""
    procs = [subprocess.Popen([*INFERAD, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for args in commands]
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{out}"


class ChainNetwork:
    """Homes ``names`` under ``root`` (``inferad init``, side by side), a chain for them
    (``inferad devnet chain`` in root/dev: anvil and the registry, every home funded, ``oracle``'s
    account the oracle; its output in root/devnet.log) and the nodes a test starts on them, each
    with ``--chain``.

    As a context manager it initialises the homes and starts the chain on entry, and always tears
    down on exit, whatever happened: every node process started here is stopped and the chain's
    process is terminated and waited for.  ``stop_chain`` and ``start_chain`` take the chain away
    and bring it back (the same command: anvil resumes the same chain on the same port).
    """

    def __init__(self, root: Path, *names: str, epoch_seconds: int | None = None, oracle: str | None = None,
                 host: str | None = None):
        self.root = root
        self.homes = {name: root / name for name in names}
        self.chain_json = root / "dev" / "chain.json"
        self.chain = ("--chain", str(self.chain_json))
        self.command = [*INFERAD, "devnet", "chain", "--dir", str(root / "dev"),
                        *(["--epoch-seconds", str(epoch_seconds)] if epoch_seconds else []),
                        *(["--oracle", str(self.homes[oracle])] if oracle else []),
                        *(["--host", host] if host else []),
                        *sum((["--fund", str(home)] for home in self.homes.values()), [])]
        self.devnet: subprocess.Popen | None = None
        self.nodes: dict[str, NodeProcess] = {}  # the latest node of each home
        self.processes: list[NodeProcess] = []  # every node started, restarts included

    def __enter__(self) -> ChainNetwork:
        try:
            self.init()
            self.start_chain()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def init(self) -> None:
        together(["init", "--home", str(home)] for home in self.homes.values())

    def start_chain(self) -> None:
        """Start the chain (again, after ``stop_chain``); return once chain.json is written (at once
        on a restart: it stays, and anvil comes back on the port it names)."""
        with open(self.root / "devnet.log", "a") as log:
            self.devnet = subprocess.Popen(self.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.chain_json.exists() or self.devnet.poll() is not None, 60, "the devnet")
        assert self.chain_json.exists(), \
            f"the devnet exited {self.devnet.returncode}:\n{(self.root / 'devnet.log').read_text()}"

    def stop_chain(self) -> None:
        if self.devnet is not None and self.devnet.poll() is None:
            self.devnet.send_signal(signal.SIGTERM)
            try:
                self.devnet.wait(30)
            except subprocess.TimeoutExpired:
                self.devnet.kill()
                self.devnet.wait()

    def stake(self, *names: str, amount: int) -> None:
        """Each of ``names`` stakes ``amount`` ETH, side by side."""
        together(["chain", "stake", str(amount), *self.chain, "--home", str(self.homes[name])] for name in names)

    def deposit(self, name: str, amount: int) -> None:
        """``name`` deposits ``amount`` ETH to pay for jobs."""
        run_cli("chain", "deposit", str(amount), *self.chain, home=self.homes[name], check=True)

    def start(self, name: str, *args: str, bootstrap: str | None = None, command: tuple[str, ...] = tuple(INFERAD),
              env: dict[str, str] | None = None, listen: str = "/ip4/127.0.0.1/tcp/0") -> NodeProcess:
        """Start a node for home ``name`` (another, if it ran before) with ``args``, dialling the node
        of home ``bootstrap`` first (``env``: variables to add), listening on ``listen``."""
        dial = ("--bootstrap", self.nodes[bootstrap].addr) if bootstrap else ()
        node = NodeProcess(self.homes[name], *dial, *args, *self.chain, command=command, env=env, listen=listen)
        self.nodes[name] = node
        self.processes.append(node)
        return node

    def wait_converged(self, *on: str, timeout: float = 60) -> None:
        """Wait until the nodes of homes ``on`` (all by default) hold the advert of every node."""
        everyone = {node.info["peer_id"] for node in self.nodes.values()}
        watchers = [self.nodes[name] for name in on] if on else list(self.nodes.values())
        wait_for(lambda: all(peer_ids(node) == everyone for node in watchers), timeout, "adverts to converge")

    def cli_json(self, *args: str, home: str):
        """What ``inferad ARGS --json`` prints for home ``home``; it must succeed."""
        return json.loads(run_cli(*args, "--json", home=self.homes[home], check=True).stdout)

    def chain_status(self, name: str) -> dict:
        """``inferad chain status`` of home ``name``."""
        return self.cli_json("chain", "status", *self.chain, home=name)

    def stop(self) -> None:
        """Stop every node started here, then the chain."""
        for node in self.processes:
            node.stop()
        self.stop_chain()
