"""The check every integration test makes of its nodes' logs (tests/conftest.py) sees what it exists for."""

import logging
import sys

import trio
from google.protobuf.message import DecodeError

from p2p.host import guarded
from tests.conftest import bug_lines


class Stream:
    reset_called = False

    async def reset(self):
        self.reset_called = True


def run_guarded(exc: Exception, caplog) -> tuple[list[str], Stream]:
    async def handler(stream):
        raise exc

    stream = Stream()
    with caplog.at_level(logging.WARNING, logger="inferad.p2p"):
        trio.run(guarded("/inferad/exec/1.0.0", handler), stream)
    return [record.getMessage() for record in caplog.records], stream


def test_a_handler_that_raises_leaves_a_line_the_log_check_reports(caplog):
    lines, stream = run_guarded(KeyError("model"), caplog)
    assert stream.reset_called
    assert bug_lines("\n".join(lines)) == ["/inferad/exec/1.0.0 handler failed ('model'); resetting the stream"]


def test_a_peers_malformed_rpc_is_the_peers_fault_not_a_bug_here(caplog):
    """py-libp2p's pubsub handler lets protobuf's DecodeError out on a malformed RPC from a peer."""
    lines, stream = run_guarded(DecodeError("Error parsing message with type 'pubsub.pb.RPC'"), caplog)
    assert stream.reset_called and lines and bug_lines("\n".join(lines)) == []


def test_tracebacks_and_crashes_are_reported_with_what_follows():
    log = "ok\nTraceback (most recent call last):\n  File x\nValueError: y\nFatal Python error: Segmentation fault\n"
    found = bug_lines(log)
    assert len(found) == 2 and found[0].startswith("Traceback") and "ValueError: y" in found[0]
    assert found[1].startswith("Fatal Python error: Segmentation fault")


def hung_up() -> RuntimeError:
    """py-libp2p's write error, raised from the peer's broken pipe (its traceback attached)."""
    try:
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError as cause:
            raise RuntimeError("Write operation failed") from cause
    except RuntimeError as exc:
        return exc


def formatted(logger: str, exc: Exception) -> str:
    from inferad.logs import _Formatter

    try:
        raise exc
    except Exception:
        record = logging.getLogger(logger).makeRecord(logger, logging.ERROR, __file__, 1, "Error sending", (),
                                                      sys.exc_info())
    return _Formatter(as_json=False).format(record)


def test_a_peer_hanging_up_on_py_libp2p_is_a_line_not_a_traceback():
    """Seen in CI: py-libp2p's identify logs a BrokenPipeError with its traceback when a peer
    disconnects while it answers, and the log check took it for a bug of ours."""
    line = formatted("libp2p.identity.identify.identify", hung_up())
    assert bug_lines(line) == [] and "the peer closed the connection" in line
    assert bug_lines(formatted("inferad.gateway", hung_up()))  # ours keep their traceback
    assert bug_lines(formatted("libp2p.pubsub", KeyError("x")))  # and so do py-libp2p's other failures


def test_py_libp2p_identify_printing_the_traceback_itself_for_a_hung_up_peer_is_one_line():
    """Seen in CI: identify logs "Error sending identify response to %s: %s (type: %s)\n%s" with
    traceback.format_exc() as the last argument."""
    import traceback

    from inferad.logs import _Formatter

    exc = hung_up()
    printed = "".join(traceback.format_exception(exc))
    record = logging.getLogger("libp2p.identity.identify.identify").makeRecord(
        "libp2p.identity.identify.identify", logging.ERROR, __file__, 1,
        "Error sending identify response to %s: %s (type: %s)\n%s", ("peer", exc, type(exc), printed), None)
    line = _Formatter(as_json=False).format(record)
    assert bug_lines(line) == [] and "the peer closed the connection" in line
