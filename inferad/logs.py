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


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
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
