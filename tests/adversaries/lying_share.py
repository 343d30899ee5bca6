"""A provider that lies about chunks, for tests: the real daemon, except that every chunk from
FIRST on of every model it shares goes out with one byte flipped (and the honest proof).

``python -m tests.adversaries.lying_share FIRST start --home … --model FILE.gguf``.  A fetcher
must find the first such chunk it gets does not match the root this node signed, drop this
node, and take the chunk from another provider.  The shipped daemon has no way to do this.
"""

from __future__ import annotations

import sys

from inferad import transfer
from proofs.chunks import CHUNK_SIZE


def main() -> None:
    first = int(sys.argv.pop(1))
    honest_read = transfer._read

    def read(path, offset, length):
        data = honest_read(path, offset, length)
        if offset >= first * CHUNK_SIZE:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    transfer._read = read
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
