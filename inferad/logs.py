"""Logging for operators: one line per event, as text or JSON.

Structured fields go in ``extra={"fields": {...}}`` and come out as
``key=value`` pairs (text) or JSON keys, so a job line can be grepped by eye
and parsed by a log shipper alike.
"""

from __future__ import annotations

import json
import logging
import sys
import time

HUNG_UP = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# What trio and py-libp2p raise when the other side closed the connection, by name (no import here).
HUNG_UP_NAMES = frozenset({"BrokenResourceError", "ClosedResourceError", "ConnectionClosedError", "StreamReset",
                           "StreamEOF", "StreamClosed"})


def peer_hung_up(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is the other side closing the connection."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, HUNG_UP) or type(exc).__name__ in HUNG_UP_NAMES:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _hung_up_record(record: logging.LogRecord) -> bool:
    if record.exc_info and peer_hung_up(record.exc_info[1]):
        return True
    args = record.args if isinstance(record.args, tuple) else ()
    return any(isinstance(a, BaseException) and peer_hung_up(a) for a in args)


class _Formatter(logging.Formatter):
    """Text or JSON lines.  A py-libp2p record whose exception is a peer hanging up gets a note
    instead of a traceback: py-libp2p logs those with ``exc_info`` (identify, for one, when a
    peer disconnects while it answers), and a traceback is how our logs say "bug here"."""

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        if record.name.startswith("libp2p") and _hung_up_record(record):
            # py-libp2p passes the traceback as exc_info, or (identify) as a formatted argument
            args = tuple("" if isinstance(a, str) and a.startswith("Traceback (most recent call last)") else a
                         for a in (record.args if isinstance(record.args, tuple) else ()))
            message = (record.msg % args if args else str(record.msg)).rstrip()
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "msg": f"{message} (the peer closed the connection)", "args": ()})
        if self.as_json:
            entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                     "logger": record.name, "msg": record.getMessage(), **fields}
            if record.exc_info:
                entry["exc"] = self.formatException(record.exc_info)
            return json.dumps(entry, default=str)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
