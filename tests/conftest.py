"""Fixtures that start real inferad processes on 127.0.0.1 and always stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

INFERAD = [sys.executable, "-m", "cli"]
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, home: Path | None = None, timeout: float = 120, check: bool = False):
    """Run ``inferad ARGS`` as a subprocess, the way a user would."""
    cmd = [*INFERAD, *args] + (["--home", str(home)] if home else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class NodeProcess:
    def __init__(self, home: Path, *extra: str, command: tuple[str, ...] = tuple(INFERAD)) -> None:
        self.home = home
        self.log_path = home.parent / f"{home.name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*command, "start", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
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
        return self.log_path.read_text()

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

    def start(name: str = "node", *extra: str) -> NodeProcess:
        node = NodeProcess(tmp_path / name, *extra)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


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


os.environ.setdefault("INFERAD_PASSPHRASE", "")
