"""Fixtures that start real inferad processes on 127.0.0.1 and always stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

INFERAD = [sys.executable, "-m", "cli"]
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, home: Path | None = None, timeout: float = 120, check: bool = False,
            env: dict[str, str] | None = None):
    """Run ``inferad ARGS`` as a subprocess, the way a user would (``env``: variables to add)."""
    cmd = [*INFERAD, *args] + (["--home", str(home)] if home else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# Run `inferad ARGS`, then write the heavy packages it imported (top-level names) to $MODULES_OUT.
IMPORT_PROBE = """
import atexit, json, os, sys
HEAVY = {"libp2p", "web3", "eth_account", "llama_cpp"}
def report():
    with open(os.environ["MODULES_OUT"], "w") as f:
        json.dump(sorted(HEAVY & {name.split(".")[0] for name in sys.modules}), f)
atexit.register(report)
sys.argv[0] = "inferad"
from cli import main
main()
"""


def run_cli_reporting_imports(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``inferad ARGS`` in a subprocess, and which of libp2p, web3, eth_account, llama_cpp it imported."""
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, MODULES_OUT=str(out)))
    return proc, json.loads(out.read_text())


# Log lines that show a bug in a node, whatever a test asserts: an exception that escaped (its
# traceback), a stream handler that raised (p2p.host.guarded logs that at WARNING, with no
# traceback), a crash of the interpreter or of llama.cpp (faulthandler's report; see the end).
BUG_SIGNS = ("Traceback", "handler failed", "Fatal Python error", "Segmentation fault")


def bug_lines(log: str) -> list[str]:
    """Each line of ``log`` that shows a bug (``BUG_SIGNS``), a traceback with the lines that follow it."""
    lines = log.splitlines()
    found = []
    for i, line in enumerate(lines):
        if any(sign in line for sign in BUG_SIGNS):
            found.append("\n".join(lines[i:i + 25]) if "Traceback" in line or "Fatal" in line else line)
    return found


def devnet_bug_lines(directory: Path) -> dict[str, list[str]]:
    """``bug_lines`` of each node log of the devnet in ``directory`` (inferad.devnet keeps them in logs/)."""
    found = {path.stem: bug_lines(path.read_text(errors="replace"))
             for path in sorted((directory / "logs").glob("*.log"))}
    return {name: lines for name, lines in found.items() if lines}


class NodeProcess:
    """``inferad start`` on 127.0.0.1, as a devnet starts it: every test node shares one IP, so gossip's
    IP-colocation protection is off (``devnet.ONE_MACHINE_ARGS``).

    Every node's log is checked for signs of a bug (``BUG_SIGNS``) after each test it lived through
    and after the module that started it (the autouse fixture ``node_logs_show_no_bug``), so no
    test has to remember to: a handler that raised fails the test it raised in.
    """

    watched: ClassVar[list[NodeProcess]] = []  # started, and not yet checked since they stopped

    def __init__(self, home: Path, *extra: str, command: tuple[str, ...] = tuple(INFERAD),
                 env: dict[str, str] | None = None, listen: str = "/ip4/127.0.0.1/tcp/0") -> None:
        from inferad.devnet import ONE_MACHINE_ARGS

        self.home = home
        self.log_path = home.parent / f"{home.name}.log"  # a restart of the same home appends to it
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "a")
        self._reported = 0  # bug lines already reported by assert_clean
        self.proc = subprocess.Popen(
            [*command, "start", "--home", str(home), "--listen", listen, *ONE_MACHINE_ARGS,
             *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
        )
        NodeProcess.watched.append(self)
        self.info = self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> dict:
        info_path = self.home / "node.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            if info_path.exists():
                info = json.loads(info_path.read_text())
                if info["pid"] == self.proc.pid:
                    return info
            time.sleep(0.1)
        raise AssertionError(f"node not ready after {timeout} s:\n{self.log()}")

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    def log(self) -> str:
        """What this process has logged (not an earlier process of the same home)."""
        return self.log_path.read_bytes()[self._log_start:].decode(errors="replace")

    def problems(self) -> list[str]:
        """The lines of this node's log that show a bug (``bug_lines``), from its start."""
        return bug_lines(self.log())

    def assert_clean(self) -> None:
        """Fail if this node's log shows a bug not reported yet (each is reported once, by the
        first check that sees it, so a shared node's bug fails one test, not every later one)."""
        new = self.problems()[self._reported:]
        self._reported += len(new)
        assert not new, f"{self.home.name}'s log ({self.log_path}) shows a bug:\n" + "\n".join(new)

    def status(self) -> dict:
        """What ``inferad status --json`` says of this node ({} while its control socket does not answer)."""
        proc = run_cli("status", "--json", home=self.home)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def peer(self, peer_id: str) -> dict:
        """What ``inferad peers --json`` on this node says of ``peer_id`` ({} before its advert)."""
        proc = run_cli("peers", "--json", home=self.home)
        return next((p for p in json.loads(proc.stdout) if p["peer_id"] == peer_id), {}) if proc.returncode == 0 else {}

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path):
    """Start ``inferad start`` processes; every one is stopped at teardown."""
    nodes: list[NodeProcess] = []

    def start(name: str = "node", *extra: str, command: tuple[str, ...] = tuple(INFERAD),
              env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(tmp_path / name, *extra, command=command, env=env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def chain_network(tmp_path):
    """``chain_network(*names, epoch_seconds=…, oracle=…)``: homes ``names`` under tmp_path, initialised,
    funded on a chain that is running (a ``tests.chainnet.ChainNetwork``, once a test).  At teardown
    its nodes are stopped and its chain terminated and waited for, whatever the test did."""
    from contextlib import ExitStack

    from tests.chainnet import ChainNetwork

    with ExitStack() as stack:
        yield lambda *names, **options: stack.enter_context(ChainNetwork(tmp_path, *names, **options))


def check_node_logs() -> None:
    """``assert_clean`` every watched node; forget those that have stopped (checked for the last time)."""
    nodes = NodeProcess.watched
    NodeProcess.watched = [node for node in nodes if node.running]
    failures = []
    for node in nodes:
        try:
            node.assert_clean()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


@pytest.fixture(autouse=True)
def node_logs_show_no_bug():
    """After every test: the nodes it started or used show no bug in their logs."""
    yield
    check_node_logs()


@pytest.fixture(scope="module", autouse=True)
def module_node_logs_show_no_bug():
    """After every module: the same for the nodes of its fixtures, which stop after its last test."""
    yield
    check_node_logs()


@pytest.fixture(scope="session")
def gemma_path():
    from inferad.models import resolve

    return resolve("gemma-3-270m").path


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node serving gemma-3-270m, shared by the tests of a module."""
    node = NodeProcess(tmp_path_factory.mktemp("shared") / "node", "--max-tokens", "64", "--n-ctx", "512")
    yield node
    node.stop()


def start_devnet(directory, nodes=3):
    (directory / "devnet.json").unlink(missing_ok=True)
    proc = subprocess.Popen([*INFERAD, "devnet", "up", "--nodes", str(nodes), "--dir", str(directory)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not (directory / "devnet.json").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "devnet did not start in 180 s"
        time.sleep(0.2)
    return proc, json.loads((directory / "devnet.json").read_text())


def stop_devnet(proc):
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    return proc.returncode, out


def leftover_processes(directory) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(directory) in line and "devnet up" not in line]


@pytest.fixture(scope="session")
def devnet(tmp_path_factory):
    """A devnet started, stopped and started again in the same directory (the second one is used)."""
    directory = tmp_path_factory.mktemp("devnet")
    first, _ = start_devnet(directory)
    code, out = stop_devnet(first)
    restarts = {"first_exit": code, "first_output": out, "leftovers_after_first": leftover_processes(directory)}
    first_bugs = devnet_bug_lines(directory)  # the second `devnet up` wipes the first one's logs
    proc, net = start_devnet(directory)
    yield dict(net, **restarts)
    code, out = stop_devnet(proc)
    assert code == 0 and "no process of this devnet is left" in out, out
    assert leftover_processes(directory) == []
    assert not first_bugs, f"the first devnet's node logs show a bug: {first_bugs}"
    assert not devnet_bug_lines(directory), f"the devnet's node logs show a bug: {devnet_bug_lines(directory)}"


os.environ.setdefault("INFERAD_PASSPHRASE", "")
# Every process a test starts (nodes, devnets and theirs) reports a crash (a segfault in llama.cpp…)
# in its log as "Fatal Python error", one of BUG_SIGNS.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
