"""The local control socket: plain commands, the streaming submit, and a CLI that stays light."""

import json
import os
import socket
import threading

import msgpack
import pytest
import trio

from inferad import control
from inferad.home import Home
from p2p import wire
from p2p.streams import StreamClosed
from tests.conftest import run_cli_reporting_imports


def test_plain_commands_answer_one_value_and_streams_take_the_connection(tmp_path):
    path = tmp_path / "control.sock"

    async def status() -> dict:
        return {"up": True}

    async def echo(framed) -> None:  # a streaming command: echoes frames until the client stops
        try:
            while True:
                await framed.send(await framed.receive())
        except StreamClosed:
            pass

    def talk_to_echo() -> list[bytes]:  # blocking, as `inferad submit --node-home` talks
        decoder, echoed = wire.FrameDecoder(wire.DEFAULT_MAX_FRAME), []
        with control.connect(path, "echo", timeout=10) as sock:
            for payload in (b"one", b"two"):
                sock.sendall(wire.encode_frame(payload))
                while (frame := decoder.next_frame()) is None:
                    decoder.feed(sock.recv(65536))
                echoed.append(frame)
        return echoed

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, path, {"status": status}, {"echo": echo})
            assert await control.ask(path, "status") == {"up": True}
            with pytest.raises(control.ControlError, match="unknown command 'nope'"):
                await control.ask(path, "nope")
            assert await trio.to_thread.run_sync(talk_to_echo) == [b"one", b"two"]
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert not path.exists()


def test_no_node_on_the_socket_is_a_control_error(tmp_path):
    with pytest.raises(control.ControlError, match="no node answers"):
        control.connect(tmp_path / "control.sock", "submit", timeout=1)
    with pytest.raises(control.ControlError, match="no node answers"):
        trio.run(control.ask, tmp_path / "control.sock", "status")


class FakeNode:
    """A control socket that answers every ``submit`` with one error frame, as a busy node does."""

    def __init__(self, home) -> None:
        self.path = home / "control.sock"
        self.jobs: list[wire.Envelope] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        (home / "node.json").write_text(json.dumps({"pid": os.getpid(), "control": str(self.path), "addrs": []}))

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        decoder, frames = wire.FrameDecoder(wire.DEFAULT_MAX_FRAME), []
        with conn:
            while len(frames) < 2:  # the request, then the signed job
                decoder.feed(conn.recv(65536))
                while (frame := decoder.next_frame()) is not None:
                    frames.append(frame)
            assert msgpack.unpackb(frames[0])["cmd"] == "submit"
            self.jobs.append(wire.decode(frames[1]))
            conn.sendall(wire.encode_frame(wire.error_frame("busy", "every slot is taken")))


def test_submit_to_a_local_node_imports_neither_libp2p_nor_ethereum_nor_llama_cpp(tmp_path):
    client, node_home = Home(tmp_path / "client"), tmp_path / "node"
    client.ensure()  # an existing home: creating one makes an Ethereum key, which does import eth_account
    node_home.mkdir()
    node = FakeNode(node_home)
    proc, heavy = run_cli_reporting_imports(tmp_path, "submit", "--home", str(client.path), "--node-home",
                                            str(node_home), "Hello", "--max-tokens", "1")
    assert proc.returncode == 3, proc.stderr  # rejected, with the node's code
    assert "rejected (busy): every slot is taken" in proc.stderr
    assert heavy == []
    (job,) = node.jobs
    assert job.type == "job" and job.signer == bytes(client.client_key.verify_key)
