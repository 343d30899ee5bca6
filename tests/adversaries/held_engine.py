"""The real daemon with an engine a test can hold mid-generation, so races against generation
speed become gates: a test that needs "a job is running" or "a few tokens are out" waits for
the engine to be held there, whatever the hardware (the 2-core CPU or a fast GPU).

    python -m tests.adversaries.held_engine GATE_DIR start --home …

runs ``inferad start`` unchanged, except that its engine passes a :class:`Gate` after every
token it generates.  While ``GATE_DIR/hold`` exists and says N, a generation that has just
produced its N-th token (of this call: a continuation's prefix does not count) writes
``GATE_DIR/held`` with this process's id and waits there, holding the engine, until ``hold``
is removed.  The tokens it produced keep flowing to the gateway meanwhile (the worker streams
them from trio, not from the engine's thread).  Several nodes may share one GATE_DIR: the first
to reach the N-th token says so in ``held``.

The shipped daemon has no such hook: holding lives in tests only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from inferad import engine as engine_module
from inferad import worker as worker_module


class Gate:
    """A gate held and released through files in one directory, by a test and by engines in other
    processes.  The test calls :meth:`hold`, :meth:`wait_held` and :meth:`release`; an engine
    calls :meth:`pass_token` after each token."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._hold, self._held = self.directory / "hold", self.directory / "held"

    def hold(self, after_tokens: int) -> None:
        """From now on, hold every generation that reaches ``after_tokens`` tokens (until released)."""
        self._held.unlink(missing_ok=True)
        self._write(self._hold, str(after_tokens))

    def wait_held(self, timeout: float) -> int:
        """Wait until an engine is held at the gate; the id of its process."""
        deadline = time.monotonic() + timeout
        while not self._held.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no engine reached the gate within {timeout} s")
            time.sleep(0.02)
        return int(self._held.read_text())

    def release(self) -> None:
        """Let every held generation go on, and hold no more."""
        self._hold.unlink(missing_ok=True)

    def pass_token(self, produced: int) -> None:
        """The engine's side: wait here while the gate holds generations at ``produced`` tokens."""
        try:
            after = int(self._hold.read_text())
        except (OSError, ValueError):
            return
        if produced != after:
            return
        self._write(self._held, str(os.getpid()))
        while self._hold.exists():
            time.sleep(0.01)

    def _write(self, path: Path, text: str) -> None:  # whole or not at all, for the reader in another process
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def held_engine(gate: Gate) -> type:
    class HeldEngine(engine_module.Engine):
        def generate(self, prompt, params, on_token, prefix=(), **options):
            produced = 0

            def gated(token) -> bool:
                nonlocal produced
                go_on = on_token(token)
                produced += 1
                gate.pass_token(produced)
                return go_on

            return super().generate(prompt, params, gated, prefix, **options)

    return HeldEngine


def main() -> None:
    gate = Gate(Path(sys.argv.pop(1)))
    worker_module.Engine = held_engine(gate)
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
