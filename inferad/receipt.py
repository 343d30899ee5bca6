"""Receipts: a job and its result, signed by the client and the worker, that anyone can check.

A receipt is a JSON object ``{"receipt": 1, "job_id", "job", "result"}`` whose ``job`` and
``result`` are the signed envelopes, byte for byte, in base64.  It is self-contained: the
signatures, the job id (the sha256 of the signed job's body) and the worker's peer id come out
of the bytes, and ``inferad verify RECEIPT`` re-scores the result on the local copy of the
model (the job names its sha256), so a developer checks the work they paid for without
trusting the network's verifiers.  Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from p2p import wire

VERSION = 1


class ReceiptError(ValueError):
    """Not a receipt, or one whose signatures or ids do not hold; the message says which."""


@dataclass(frozen=True)
class Receipt:
    job_bytes: bytes  # the client-signed envelope
    result_bytes: bytes  # the worker-signed envelope
    job: wire.Envelope
    result: wire.Envelope

    @property
    def job_id(self) -> str:
        return self.job.digest

    def to_json(self) -> dict:
        return {"receipt": VERSION, "job_id": self.job_id, "job": base64.b64encode(self.job_bytes).decode(),
                "result": base64.b64encode(self.result_bytes).decode(),
                "worker": self.result.signer_peer_id, "result_hash": self.result.digest}


def make(job: bytes, result: bytes) -> Receipt:
    """The receipt of a signed job and its signed result (as stored or received).
    Raises ReceiptError when they do not belong together."""
    return _checked(job, result)


def parse(document: object) -> Receipt:
    """A receipt from its JSON form.  Raises ReceiptError for anything that is not a valid one:
    malformed, a signature that does not verify, a result for another job or signed by another
    key than the worker it names."""
    if not isinstance(document, dict) or document.get("receipt") != VERSION:
        raise ReceiptError(f"not an inferad receipt (expected {{\"receipt\": {VERSION}, \"job\", \"result\"}})")
    raw = []
    for name in ("job", "result"):
        try:
            raw.append(base64.b64decode(document.get(name) or "", validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise ReceiptError(f"receipt.{name} is not base64") from None
    receipt = _checked(*raw)
    if document.get("job_id") not in (None, receipt.job_id):
        raise ReceiptError(f"receipt.job_id says {document['job_id']}, but the signed job's id is {receipt.job_id}")
    return receipt


def _decode(raw: bytes, what: str) -> wire.Envelope:
    try:
        envelope = wire.decode(raw, max_size=2 * wire.DEFAULT_MAX_FRAME)
    except wire.WireError as exc:
        raise ReceiptError(f"the receipt's {what} does not decode or verify: {exc}") from None
    if envelope.type != what:
        raise ReceiptError(f"the receipt's {what} is a {envelope.type} message")
    return envelope


def _checked(job_bytes: bytes, result_bytes: bytes) -> Receipt:
    job, result = _decode(job_bytes, "job"), _decode(result_bytes, "result")
    if result.message.job_id != job.digest:
        raise ReceiptError(f"the result answers job {result.message.job_id}, not this receipt's {job.digest}")
    if result.message.worker != result.signer_peer_id:
        raise ReceiptError(f"the result names worker {result.message.worker} but is signed by {result.signer_peer_id}")
    return Receipt(job_bytes, result_bytes, job, result)
