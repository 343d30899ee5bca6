"""Small files this node keeps (caches, keys, state), written so that a crash never leaves half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any, *, indent: int | None = None, mode: int = 0o644) -> None:
    """Write ``value`` as JSON (keys sorted) to ``path`` atomically: readers see the old file or the
    new one, never a part (a temporary file beside it, then rename(2)).  Creates the parent
    directory; the file gets ``mode`` (0o600 for secrets).  Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        json.dump(value, f, indent=indent, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
