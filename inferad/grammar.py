"""JSON mode: a job's grammar as a mask of the tokens allowed at each position (llama.cpp grammars).

A job with ``params.grammar`` (GBNF text, part of the signed job) may emit only tokens its
grammar allows; the sampler (:mod:`proofs.sampler`) leaves the others out, and a verifier
applies the same mask while it replays the claimed tokens.  OpenAI's ``response_format``
becomes a grammar at the API (:func:`grammar_for`): ``json_object`` is llama.cpp's JSON grammar,
``json_schema`` the grammar llama-cpp-python builds from the schema.  The masks come from
llama.cpp's grammar sampler (``llama_sampler_init_grammar``), applied to the whole vocabulary.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np

from p2p.wire import MAX_GRAMMAR


class GrammarError(ValueError):
    """A grammar (or a JSON schema) llama.cpp cannot use; the message says why."""


def grammar_for(response_format: dict) -> str | None:
    """The GBNF text for OpenAI's ``response_format`` (None for ``text``).
    Raises GrammarError for a schema llama-cpp-python cannot turn into a grammar."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    kind = response_format.get("type")
    if kind == "json_object":
        return JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise GrammarError("response_format.json_schema.schema must be a JSON schema object")
        try:
            grammar = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # the converter raises what the schema provokes
            raise GrammarError(f"this JSON schema cannot be turned into a grammar: {exc}") from None
        if len(grammar) > MAX_GRAMMAR:
            raise GrammarError(f"the schema's grammar is {len(grammar)} characters; at most {MAX_GRAMMAR}")
        return grammar
    return None


class GrammarMask:
    """One choice's grammar state: :meth:`allowed` masks the vocabulary at the current position,
    :meth:`accept` advances past the token emitted there.  Not thread-safe (the engine thread).

    Raises GrammarError when llama.cpp cannot parse ``gbnf``."""

    def __init__(self, vocab, n_vocab: int, gbnf: str) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self._sampler:
            raise GrammarError("llama.cpp cannot parse this grammar")
        self._data = (llama_cpp.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._data).view(
            np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._array = llama_cpp.llama_token_data_array(data=self._data, size=n_vocab, selected=-1, sorted=False)
        self._one = (llama_cpp.llama_token_data * 1)()

    def allowed(self) -> np.ndarray:
        """A boolean per token: whether the grammar allows it next."""
        self._view["id"], self._view["logit"], self._view["p"] = self._ids, 0.0, 0.0
        self._array.size, self._array.selected, self._array.sorted = len(self._ids), -1, False
        self._llama.llama_sampler_apply(self._sampler, ctypes.byref(self._array))
        return np.isfinite(self._view["logit"])

    def allows(self, token: int) -> bool:
        """Whether the grammar allows ``token`` next (one candidate: far cheaper than :meth:`allowed`)."""
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        one = self._llama.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._llama.llama_sampler_apply(self._sampler, ctypes.byref(one))
        return bool(np.isfinite(self._one[0].logit))

    def accept(self, token: int) -> None:
        """Advance past ``token``, which :meth:`allowed` must have allowed (llama.cpp aborts otherwise)."""
        self._llama.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._llama.llama_sampler_free(self._sampler)
            self._sampler = None
