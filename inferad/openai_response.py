"""Signed results and streamed tokens -> OpenAI's response objects, as pure functions (no I/O).

The other half of :mod:`inferad.openai_request`.  One request becomes one job per prompt, each
of ``n`` choices; the choice ``c`` of job ``j`` is OpenAI's choice ``j * n + c`` (OpenAI numbers
the choices of a list of prompts the same way).  Log-probabilities come in OpenAI's two shapes:
chat's ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal"}`` and the legacy
completions' ``{tokens, token_logprobs, top_logprobs, text_offset}``.  A token whose bytes are
not UTF-8 on their own (part of a character) is named ``bytes:\\xe2\\x80`` as OpenAI names it;
its ``bytes`` are exact.  ``text_offset`` counts characters of the completion, from 0 (no echo).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from p2p import wire


def token_string(piece: bytes) -> str:
    """A token's text for ``token`` fields: its UTF-8, or ``bytes:\\xNN…`` when it is part of a character."""
    try:
        return piece.decode()
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def chat_logprobs(entries: Sequence[wire.TokenLogprob]) -> dict:
    """Chat's ``choices[].logprobs`` for these tokens."""
    def one(piece: bytes, logprob: float) -> dict:
        return {"token": token_string(piece), "logprob": logprob, "bytes": list(piece)}

    return {"content": [{**one(e.piece, e.logprob), "top_logprobs": [one(t.piece, t.logprob) for t in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: Sequence[wire.TokenLogprob], offset: int = 0) -> dict:
    """Legacy completions' ``choices[].logprobs`` for these tokens, the first at character ``offset``."""
    tokens = [token_string(e.piece) for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{token_string(t.piece): t.logprob for t in e.top} for e in entries],
            "text_offset": offsets}


class Shape:
    """OpenAI's response objects for one request (chat or text completion): ``job_ids`` one per
    prompt, each with ``n`` choices, log-probabilities when the request asked (``logprobs``)."""

    def __init__(self, *, chat: bool, job_ids: list[str], model: str, n: int = 1, logprobs: bool = False) -> None:
        self.chat, self.job_ids, self.model, self.n, self.logprobs = chat, job_ids, model, n, logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + job_ids[0][:29]
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self._offsets: dict[int, int] = {}  # streamed characters so far, by choice index (text_offset)

    def index(self, job: int, choice: int) -> int:
        return job * self.n + choice

    def _base(self, streaming: bool) -> dict:
        obj = self.object + (".chunk" if streaming and self.chat else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def inferad(self, job: int, envelope: wire.Envelope | None) -> dict:
        """The extension field: the job behind a choice, its worker and result hash."""
        out: dict[str, Any] = {"job_id": self.job_ids[job], "verification": "pending: drawn after the job expires"}
        if envelope is not None:
            out.update(worker=envelope.message.worker, result_hash=envelope.digest, worker_signature_valid=True)
        return out

    def _logprobs(self, entries: Sequence[wire.TokenLogprob] | None, index: int) -> dict | None:
        if not self.logprobs or entries is None:
            return None
        if self.chat:
            return chat_logprobs(entries)
        shaped = completion_logprobs(entries, self._offsets.get(index, 0))
        self._offsets[index] = self._offsets.get(index, 0) + sum(len(t) for t in shaped["tokens"])
        return shaped

    @staticmethod
    def _usage(results: list[wire.Envelope]) -> dict:
        prompt = sum(e.message.usage.prompt_tokens for e in results)
        completion = sum(e.message.usage.completion_tokens for e in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self, results: list[wire.Envelope]) -> dict:
        """The response to a request that did not stream: ``results`` one per job, in order."""
        choices = []
        for job, envelope in enumerate(results):
            for c, signed in enumerate(envelope.message.all_choices()):
                index = self.index(job, c)
                choice: dict[str, Any] = {"index": index, "finish_reason": signed.finish_reason,
                                          "logprobs": self._logprobs(signed.logprobs, index)}
                if self.chat:
                    choice["message"] = {"role": "assistant", "content": signed.text}
                else:
                    choice["text"] = signed.text
                if len(results) > 1:
                    choice["inferad"] = self.inferad(job, envelope)
                choices.append(choice)
        return {**self._base(False), "choices": choices, "usage": self._usage(results),
                "inferad": self.inferad(0, results[0])}

    def _chunk(self, delta: dict | str, index: int, *, finish: str | None = None, logprobs: dict | None = None,
               extension: dict | None = None) -> dict:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": logprobs}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        out = {**self._base(True), "choices": [choice]}
        if extension is not None:
            out["inferad"] = extension
        return out

    def opening_chunks(self) -> list[dict]:
        """Chat streams open every choice with the assistant's role; completions open with nothing."""
        if not self.chat:
            return []
        return [self._chunk({"role": "assistant", "content": ""}, i) for i in range(len(self.job_ids) * self.n)]

    def token_chunks(self, job: int, tokens: Sequence[wire.Token]) -> list[dict]:
        """A chunk per choice that these streamed tokens of ``job`` add text or log-probabilities to."""
        chunks = []
        for c in dict.fromkeys(t.choice for t in tokens):  # choices in order of appearance
            mine = [t for t in tokens if t.choice == c]
            text = "".join(t.text for t in mine)
            index = self.index(job, c)
            entries = [t.logprob for t in mine if t.logprob is not None]
            logprobs = self._logprobs(entries, index) if entries else None
            if text or logprobs:
                chunks.append(self._chunk({"content": text} if self.chat else text, index, logprobs=logprobs))
        return chunks

    def finish_chunks(self, job: int, envelope: wire.Envelope) -> list[dict]:
        """The last chunk of each of ``job``'s choices: its finish reason and the job's signed result."""
        return [self._chunk({} if self.chat else "", self.index(job, c), finish=signed.finish_reason,
                            extension=self.inferad(job, envelope))
                for c, signed in enumerate(envelope.message.all_choices())]

    def usage_chunk(self, results: list[wire.Envelope]) -> dict:
        return {**self._base(True), "choices": [], "usage": self._usage(results)}
