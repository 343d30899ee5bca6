"""A cheating worker for tests: the real daemon, its engine swapped for one that lies.

``python -m tests.adversaries.cheating_worker KIND start --home …`` runs
``inferad start`` unchanged except that every result it signs carries a
forged output (KIND: one of ``tests.adversaries.forgeries.FORGERIES``),
streamed and signed as if it were honest.

The shipped daemon has no way to do this: cheating lives in tests only.
"""

from __future__ import annotations

import random
import sys

from inferad import engine as engine_module
from inferad import worker as worker_module
from tests.adversaries.forgeries import FORGERIES


def cheating_engine(forge) -> type:
    class CheatingEngine(engine_module.Engine):
        def generate(self, prompt, params, on_token, prefix=(), **options):
            honest = super().generate(prompt, params, None, prefix, **options)
            forged = forge(self, prompt, honest.tokens, params, random.Random(len(prompt)),
                           options.get("job_id", engine_module.NO_JOB))
            out = engine_module.OutputStream(params, lambda tok: self._llm.detokenize([tok], special=False),
                                             self._is_eog, on_token)
            out.replay(list(prefix))
            for tok in forged[len(prefix):]:
                if out.push(tok):
                    break
            return out.result(len(prompt))

    return CheatingEngine


def main() -> None:
    kind = sys.argv.pop(1)
    if kind not in FORGERIES:
        raise SystemExit(f"KIND must be one of {', '.join(sorted(FORGERIES))}")
    worker_module.Engine = cheating_engine(FORGERIES[kind])
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
