"""A cheating worker for tests: the real daemon, its engine swapped for one that lies.

``python -m tests.adversaries.cheating_worker KIND start --home …`` runs
``inferad start`` unchanged except that every result it signs is forged:

- ``altered``: one token in the middle replaced by another;
- ``random``: every token replaced by a random one;
- ``truncated``: the output cut in half (the result still claims to be complete);
- ``other_prompt``: the output of a different prompt.

The shipped daemon has no way to do this: cheating lives in tests only.
"""

from __future__ import annotations

import random
import sys

from inferad import engine as engine_module
from inferad import node as node_module

KINDS = ("altered", "random", "truncated", "other_prompt")


def forge(kind: str, engine: engine_module.Engine, tokens: list[int], prompt: list[int], params) -> list[int]:
    rng = random.Random(len(tokens))
    if kind == "altered":
        i = len(tokens) // 2
        return tokens[:i] + [(tokens[i] + 1 + rng.randrange(50_000)) % 200_000] + tokens[i + 1:]
    if kind == "random":
        return [rng.randrange(1_000, 200_000) for _ in tokens]
    if kind == "truncated":
        return tokens[: max(len(tokens) // 2, 1)]
    other = engine.tokenize("A recipe for bread: flour, water, salt and")
    return engine_module.Engine.generate(engine, other, params, lambda tok, delta: True).tokens


def cheating_engine(kind: str) -> type:
    class CheatingEngine(engine_module.Engine):
        def generate(self, prompt, params, on_token, prefix=()):
            honest = super().generate(prompt, params, lambda tok, delta: True, prefix)
            forged = forge(kind, self, honest.tokens, prompt, params)
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
    if kind not in KINDS:
        raise SystemExit(f"kind must be one of {', '.join(KINDS)}")
    node_module.Engine = cheating_engine(kind)
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
