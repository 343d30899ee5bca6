"""The inferad wire format (DESIGN §4), sans I/O.

Every message is a canonical msgpack map ``{v, t, body, pk, sig}``.  Signed
types carry the Ed25519 public key of their author and a signature over
``b"inferad/1/" + t + b"\\0" + canonical(body)``; the domain prefix keeps a
signature made for one message type from being replayed as another.

Decoding is strict on purpose: sizes are bounded before allocation, the bytes
must be the canonical encoding of what they decode to (so no two byte strings
carry the same signed content), unknown keys are rejected and every field is
range-checked.  Canonical holds at two levels: the msgpack (keys sorted by
their UTF-8 bytes, every header and integer in its shortest form, floats as
float64) and the schema (a float field holds a float64, an absent field is
never nil, a field equal to its default is left out), so a body is accepted
only if it is exactly ``canonical(unparse(parse(body)))``.

The checks run in a fixed order, and the first that fails names the error:
size (``frame_too_large``), msgpack and envelope (``malformed``), signature
(``bad_signature``, also for a signed type without ``pk``/``sig``), then the
body against the schema of its declared type (``schema``).  Whether the type
is one the protocol takes (``unexpected``) is the caller's check, after these.
Anything wrong raises a :class:`WireError` whose ``code`` goes back to the peer
in an ``error`` frame.  This module imports no libp2p: it is tested without
sockets, like h11.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from p2p.schema import (
    ETH_ADDRESS,
    HEX_DIGEST,
    PEER_ID,
    UINT64,
    SchemaError,
    WireError,
    binary,
    blob,
    choice,
    field,
    integer,
    nested,
    number,
    optional,
    parse,
    sequence,
    text,
    unparse,
    view,
)

__all__ = [
    "WireError", "SchemaError", "MalformedMessage", "BadSignature", "FrameTooLarge",
    "ModelRef", "ChatMessage", "SamplingParams", "JobRequest", "JobResult", "Choice", "TokenLogprob",
    "TopLogprob", "Usage",
    "Timings", "EngineInfo", "Token", "ErrorFrame", "Envelope", "ExecRequest", "Advert", "ModelOffer",
    "Hardware", "Gpu", "Load", "Limits", "provider_key", "served_key", "stream_mismatch", "VerifyRequest",
    "VerifyMetrics", "Attestation",
    "EvidenceRequest", "Evidence", "AttestationsRequest", "AttestationSet", "ModelInfoRequest", "ModelInfo",
    "ChunkRequest", "Chunk",
    "canonical", "digest", "sign", "sign_body", "encode_unsigned", "decode", "encode_frame", "unparse", "view",
    "FrameDecoder", "peer_id_from_public_key", "DEFAULT_MAX_FRAME",
]

VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20
MAX_NESTING = 16
MAX_TOKENS_LIMIT = 32768
MAX_PROMPT_CHARS = 512 * 1024
MAX_PROMPT_TOKENS = 1 << 17
MAX_CHOICES = 16  # params.n: choices of one job, decoded side by side from one prefill
MAX_TOP_LOGPROBS = 20  # params.logprobs: alternatives per output token (OpenAI's top_logprobs bound)
# A job's output tokens (all choices) times (1 + params.logprobs), when logprobs are asked for:
# bounds the result frame (about 25 bytes per entry: 16384 entries stay well under 1 MiB).
MAX_LOGPROB_ENTRIES = 1 << 14
MAX_GRAMMAR = 64 * 1024  # characters of GBNF in params.grammar
MAX_CHUNK_BYTES = 1 << 20  # a model chunk: proofs.chunks.CHUNK_SIZE
MAX_CHUNK_PROOF = 20  # siblings in a chunk's Merkle proof: proofs.chunks.MAX_PROOF
MAX_MODEL_BYTES = 1 << 40  # a model file: proofs.chunks.MAX_CHUNKS chunks
MODEL_MAX_FRAME = MAX_CHUNK_BYTES + 4096  # frames on /inferad/model/1.0.0: a chunk, its proof, its fields


class MalformedMessage(WireError):
    code = "malformed"


class BadSignature(WireError):
    code = "bad_signature"


class FrameTooLarge(WireError):
    code = "frame_too_large"


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class ModelRef:
    """A model is its file's sha256; the name is for people."""

    sha256: str = field(HEX_DIGEST)
    name: str = field(text(128, 1))


@dataclass(frozen=True)
class ChatMessage:
    role: str = field(choice("system", "user", "assistant"))
    content: str = field(text(MAX_PROMPT_CHARS))


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters; temperature 0 means greedy and makes output reproducible."""

    max_tokens: int = field(integer(1, MAX_TOKENS_LIMIT))
    temperature: float = field(number(0.0, 2.0), 0.0)
    top_p: float = field(number(0.0, 1.0), 1.0)
    top_k: int = field(integer(0, 1000), 0)
    min_p: float = field(number(0.0, 1.0), 0.0)  # only tokens at least min_p times as likely as the best
    seed: int = field(integer(0, 2**32 - 1), 0)  # choice i draws with seed + i (mod 2**32)
    stop: tuple = field(sequence(text(64, 1), 8), ())
    n: int = field(integer(1, MAX_CHOICES), 1)  # choices, each of up to max_tokens
    # None: no log-probabilities; k: each output token's, with the k most likely alternatives
    logprobs: int | None = field(optional(integer(0, MAX_TOP_LOGPROBS)), None)
    # GBNF: only tokens this grammar allows are emitted (JSON mode: inferad.grammar)
    grammar: str | None = field(optional(text(MAX_GRAMMAR, 1)), None)

    def __post_init__(self) -> None:
        if self.n * self.max_tokens > MAX_TOKENS_LIMIT:
            raise ValueError(f"n x max_tokens = {self.n * self.max_tokens}: a job's choices together may "
                             f"produce at most {MAX_TOKENS_LIMIT} tokens")
        if self.logprobs is not None and self.n * self.max_tokens * (1 + self.logprobs) > MAX_LOGPROB_ENTRIES:
            raise ValueError(f"n x max_tokens x (1 + logprobs) = {self.n * self.max_tokens * (1 + self.logprobs)}: "
                             f"at most {MAX_LOGPROB_ENTRIES} log-probabilities per job")


@dataclass(frozen=True)
class JobRequest:
    """A client-signed inference job; its id is the sha256 of its canonical body."""

    type: ClassVar[str] = "job"
    signed: ClassVar[bool] = True

    model: ModelRef = field(nested(ModelRef))
    params: SamplingParams = field(nested(SamplingParams))
    max_price: int = field(UINT64)
    client_eth: str = field(ETH_ADDRESS)
    nonce: int = field(UINT64)
    created_at: int = field(UINT64)
    expires_at: int = field(UINT64)
    prompt: str | None = field(optional(text(MAX_PROMPT_CHARS)), None)
    messages: tuple | None = field(optional(sequence(nested(ChatMessage), 256)), None)
    # Token ids the model sees as they are (no BOS added): OpenAI's token-array prompts.
    prompt_tokens: tuple | None = field(optional(sequence(integer(0, 2**31 - 1), MAX_PROMPT_TOKENS)), None)
    # A LoRA adapter (a GGUF file, by its sha256) applied to ``model``: a fine-tune that travels small.
    adapter: ModelRef | None = field(optional(nested(ModelRef)), None)

    @property
    def served_key(self) -> str:
        """What a worker must serve to run this job: :func:`served_key` of its model and adapter."""
        return served_key(self.model.sha256, self.adapter.sha256 if self.adapter else None)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.prompt, self.messages, self.prompt_tokens)) != 1:
            raise ValueError("exactly one of prompt, messages and prompt_tokens is required")
        if self.prompt_tokens is not None and not self.prompt_tokens:
            raise ValueError("prompt_tokens must not be empty")
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = field(integer(0, 2**31))
    completion_tokens: int = field(integer(0, 2**31))


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent waiting in the queue, evaluating the prompt and decoding."""

    queue_ms: int = field(integer(0, 2**40))
    prompt_ms: int = field(integer(0, 2**40))
    decode_ms: int = field(integer(0, 2**40))


@dataclass(frozen=True)
class EngineInfo:
    name: str = field(text(64, 1))
    version: str = field(text(64))
    backend: str = field(text(64))


@dataclass(frozen=True)
class TopLogprob:
    """An alternative at one output position: token ``id``, its bytes and its log-probability."""

    id: int = field(integer(0, 2**31 - 1))
    piece: bytes = field(blob(256))
    logprob: float = field(number(-1e9, 0.0))


@dataclass(frozen=True)
class TokenLogprob:
    """One output token's log-probability under the model (the log-softmax of the logits it was sampled
    from, before temperature and truncation), its bytes, and the ``params.logprobs`` most likely tokens."""

    logprob: float = field(number(-1e9, 0.0))
    piece: bytes = field(blob(256))
    top: tuple = field(sequence(nested(TopLogprob), MAX_TOP_LOGPROBS), ())


@dataclass(frozen=True)
class Choice:
    """Choice 1 to n-1 of a job with ``params.n`` > 1 (choice 0 is the result's own fields)."""

    output_tokens: tuple = field(sequence(integer(0, 2**31 - 1), MAX_TOKENS_LIMIT))
    text: str = field(text(4 * MAX_PROMPT_CHARS))
    finish_reason: str = field(choice("stop", "length"))
    logprobs: tuple | None = field(optional(sequence(nested(TokenLogprob), MAX_TOKENS_LIMIT)), None)


@dataclass(frozen=True)
class JobResult:
    """A worker-signed result; ``sha256(canonical body)`` is the result hash."""

    type: ClassVar[str] = "result"
    signed: ClassVar[bool] = True

    job_id: str = field(HEX_DIGEST)
    model: ModelRef = field(nested(ModelRef))
    output_tokens: tuple = field(sequence(integer(0, 2**31 - 1), MAX_TOKENS_LIMIT))
    text: str = field(text(4 * MAX_PROMPT_CHARS))
    finish_reason: str = field(choice("stop", "length"))
    usage: Usage = field(nested(Usage))
    timings: Timings = field(nested(Timings))
    engine: EngineInfo = field(nested(EngineInfo))
    worker: str = field(PEER_ID)
    # Unix ms when the worker signed, by its clock: before the job's expires_at, so the
    # worker could not know the job's verification beacon (the first block after expiry).
    signed_at: int = field(UINT64)
    # A continuation after another worker failed: the first ``continued_from``
    # output tokens were given to this worker, which generated the rest.
    continued_from: int = field(integer(0, MAX_TOKENS_LIMIT), 0)
    # With params.logprobs: one entry per output token (all of them, a continuation's prefix too).
    logprobs: tuple | None = field(optional(sequence(nested(TokenLogprob), MAX_TOKENS_LIMIT)), None)
    choices: tuple = field(sequence(nested(Choice), MAX_CHOICES - 1), ())  # choices 1..n-1 when n > 1

    def __post_init__(self) -> None:
        if self.usage.completion_tokens != sum(len(c.output_tokens) for c in self.all_choices()):
            raise ValueError("usage.completion_tokens must equal the number of output tokens of every choice")
        if self.continued_from > len(self.output_tokens):
            raise ValueError("continued_from exceeds the number of output tokens")
        if self.continued_from and self.choices:
            raise ValueError("a job with several choices is never continued")
        for c in self.all_choices():
            if c.logprobs is not None and len(c.logprobs) != len(c.output_tokens):
                raise ValueError("logprobs must hold one entry per output token")

    def all_choices(self) -> tuple[Choice, ...]:
        """Every choice, choice 0 (this result's own fields) first."""
        first = Choice(output_tokens=self.output_tokens, text=self.text, finish_reason=self.finish_reason,
                       logprobs=self.logprobs)
        return (first, *self.choices)


def stream_mismatch(result: JobResult, tokens: Sequence[Token], prefix: int = 0) -> str | None:
    """Why ``tokens``, streamed after the first ``prefix`` output tokens of choice 0, are not the
    signed ``result``'s (ids, and log-probabilities where streamed), or None when they are."""
    choices = result.all_choices()
    streamed: list[list[Token]] = [[] for _ in choices]
    for token in tokens:
        if token.choice >= len(choices):
            return f"a token of choice {token.choice} was streamed; the result has {len(choices)} choice(s)"
        streamed[token.choice].append(token)
    for i, (signed, got) in enumerate(zip(choices, streamed, strict=True)):
        start = prefix if i == 0 else 0
        if tuple(t.id for t in got) != tuple(signed.output_tokens[start:]):
            return f"choice {i}: the result differs from the streamed tokens"
        if signed.logprobs is not None and any(t.logprob is not None and t.logprob != signed.logprobs[start + k]
                                               for k, t in enumerate(got)):
            return f"choice {i}: the result's log-probabilities differ from the streamed ones"
    return None


@dataclass(frozen=True)
class ExecRequest:
    """A gateway asks a worker to run a client's job (signed by the gateway).

    ``job`` is the client-signed envelope, byte for byte, so the worker checks
    the client's signature itself; ``prefix`` holds the output tokens already
    delivered by a worker that failed mid-stream, to continue from.
    """

    type: ClassVar[str] = "exec"
    signed: ClassVar[bool] = True

    job: bytes = field(blob(DEFAULT_MAX_FRAME))
    prefix: tuple = field(sequence(integer(0, 2**31 - 1), MAX_TOKENS_LIMIT), ())


def served_key(model_sha256: str, adapter_sha256: str | None = None) -> str:
    """A model, or a (model, LoRA adapter) pair, as a node serves it: ``<model sha256>`` or
    ``<model sha256>+<adapter sha256>``."""
    return model_sha256 if adapter_sha256 is None else f"{model_sha256}+{adapter_sha256}"


@dataclass(frozen=True)
class ModelOffer:
    sha256: str = field(HEX_DIGEST)
    name: str = field(text(128, 1))
    tokens_per_s: float = field(number(0.0, 1e6))  # measured at start on this hardware
    n_ctx: int = field(integer(1, 1 << 24))
    n_vocab: int = field(integer(0, 1 << 24), 0)  # token ids are below this (0: not said)
    adapter: str | None = field(optional(HEX_DIGEST), None)  # a LoRA adapter's sha256, applied to the model

    @property
    def key(self) -> str:
        return served_key(self.sha256, self.adapter)


@dataclass(frozen=True)
class Gpu:
    name: str = field(text(128))
    vram_mb: int = field(integer(0, 1 << 30))
    driver: str = field(text(64))


@dataclass(frozen=True)
class Hardware:
    cpu: str = field(text(256))
    cores: int = field(integer(1, 1 << 16))
    ram_mb: int = field(integer(0, 1 << 40))
    gpus: tuple = field(sequence(nested(Gpu), 16), ())


@dataclass(frozen=True)
class Load:
    """A node's jobs now: ``queued`` waiting, ``running`` in ``slots`` decoded side by side,
    ``capacity`` taken at once (slots + queue); ``tokens_per_s``: the tokens it delivered per
    second over the last seconds, all slots together (0: not measured lately)."""

    queued: int = field(integer(0, 1 << 20))
    running: int = field(integer(0, 1 << 20))
    capacity: int = field(integer(0, 1 << 20))
    slots: int = field(integer(1, 1 << 12), 1)
    tokens_per_s: float = field(number(0.0, 1e7), 0.0)


@dataclass(frozen=True)
class Limits:
    """What a node takes, so a client need not learn it from refusals.

    ``max_tokens``: the largest ``params.max_tokens`` it runs or routes;
    ``max_ttl_s``: the longest job lifetime (``expires_at - created_at``), seconds;
    ``clock_skew_s``: how far in the future ``created_at`` may be, seconds;
    ``max_frame``: the largest frame it reads, bytes.
    """

    max_tokens: int = field(integer(1, MAX_TOKENS_LIMIT))
    max_ttl_s: int = field(integer(1, 2**32 - 1))
    clock_skew_s: int = field(integer(0, 2**32 - 1))
    max_frame: int = field(integer(1, 2**32 - 1))


@dataclass(frozen=True)
class Advert:
    """What a node offers, gossiped every few seconds and on change.

    Signed by the node key; ``peer_id`` must be the signer's.  ``seq`` grows
    with every advert of a node, so a replayed old advert is ignored.
    """

    type: ClassVar[str] = "advert"
    signed: ClassVar[bool] = True

    peer_id: str = field(PEER_ID)
    addrs: tuple = field(sequence(text(256, 1), 16))
    eth: str = field(ETH_ADDRESS)
    engine: str = field(choice("llama.cpp", "sim"))
    models: tuple = field(sequence(nested(ModelOffer), 32))
    hardware: Hardware = field(nested(Hardware))
    load: Load = field(nested(Load))
    version: str = field(text(32))
    seq: int = field(UINT64)
    ts: int = field(UINT64)  # unix ms
    interval: int = field(integer(1, 3600))  # seconds until the next advert; 3 missed = gone
    # Absent only in adverts of nodes older than this field: assume the defaults of docs/protocol.md.
    limits: Limits | None = field(optional(nested(Limits)), None)
    # Whether peers can dial this node (AutoNAT): "public", "private" (behind NAT), "unknown"; absent:
    # a node older than this field.
    reach: str | None = field(optional(choice("public", "private", "unknown")), None)

    def offers(self, key: str) -> ModelOffer | None:
        """The offer of a model or (model, adapter) pair, by :func:`served_key`."""
        return next((m for m in self.models if m.key == key), None)


@dataclass(frozen=True)
class Token:
    """One streamed token; unsigned, the signed result that closes the stream covers it."""

    type: ClassVar[str] = "token"
    signed: ClassVar[bool] = False

    index: int = field(integer(0, MAX_TOKENS_LIMIT))  # position in its choice's output
    id: int = field(integer(0, 2**31 - 1))
    text: str = field(text(1024))
    choice: int = field(integer(0, MAX_CHOICES - 1), 0)
    logprob: TokenLogprob | None = field(optional(nested(TokenLogprob)), None)  # with params.logprobs


@dataclass(frozen=True)
class ErrorFrame:
    """A typed refusal: ``code`` is for programs, ``message`` for people."""

    type: ClassVar[str] = "error"
    signed: ClassVar[bool] = False

    code: str = field(text(32, 1))
    message: str = field(text(2048))


@dataclass(frozen=True)
class ServedEntry:
    job: bytes = field(blob(DEFAULT_MAX_FRAME))  # client-signed job envelope
    result: bytes = field(blob(DEFAULT_MAX_FRAME))  # worker-signed result envelope


@dataclass(frozen=True)
class ReportRequest:
    """The oracle asks a node for the jobs it served in epochs (after, upto]."""

    type: ClassVar[str] = "report_request"
    signed: ClassVar[bool] = True

    after: int = field(UINT64)
    upto: int = field(UINT64)
    offset: int = field(integer(0, 1 << 30), 0)


@dataclass(frozen=True)
class Report:
    """A node's signed account of the jobs it served; ``next_offset`` 0 means complete."""

    type: ClassVar[str] = "report"
    signed: ClassVar[bool] = True

    after: int = field(UINT64)
    upto: int = field(UINT64)
    entries: tuple = field(sequence(nested(ServedEntry), 4096))
    next_offset: int = field(integer(0, 1 << 30), 0)


@dataclass(frozen=True)
class ProofRequest:
    type: ClassVar[str] = "proof_request"
    signed: ClassVar[bool] = True

    account: str = field(ETH_ADDRESS)


@dataclass(frozen=True)
class RewardProof:
    """The oracle's Merkle proof of an account's cumulative rewards (amounts as 32-byte big-endian)."""

    type: ClassVar[str] = "proof"
    signed: ClassVar[bool] = True

    account: str = field(ETH_ADDRESS)
    epoch: int = field(UINT64)
    root: bytes = field(binary(32))
    cumulative: bytes = field(binary(32))
    proof: tuple = field(sequence(binary(32), 64))


@dataclass(frozen=True)
class VerifyRequest:
    """A gateway asks a drawn verifier to re-score a result (signed by the gateway).

    It carries everything needed to recompute the draw: the client-signed job,
    the worker-signed result, and the beacon block that decided the draw.
    """

    type: ClassVar[str] = "verify_request"
    signed: ClassVar[bool] = True

    job: bytes = field(blob(DEFAULT_MAX_FRAME))
    result: bytes = field(blob(DEFAULT_MAX_FRAME))
    beacon_block: int = field(UINT64)
    beacon: bytes = field(binary(32))


@dataclass(frozen=True)
class VerifyMetrics:
    positions: int = field(integer(0, MAX_TOKENS_LIMIT), 0)
    max_gap: float = field(number(-1e9, 1e9), 0.0)  # greedy: worst nats behind the top token
    z: float = field(number(-1e9, 1e9), 0.0)  # the statistical check's z-score (before the replayable sampler)
    first_bad: int | None = field(optional(integer(0, MAX_TOKENS_LIMIT)), None)
    elapsed_ms: int = field(integer(0, 2**40), 0)
    max_miss: float = field(number(0.0, 1.0), 0.0)  # sampled: farthest a public draw fell outside its token's interval
    ambiguous: int = field(integer(0, MAX_TOKENS_LIMIT), 0)  # sampled: positions within the noise band


@dataclass(frozen=True)
class Attestation:
    """A verifier's signed verdict on one result; gossiped and stored by every node."""

    type: ClassVar[str] = "attestation"
    signed: ClassVar[bool] = True

    job_id: str = field(HEX_DIGEST)
    result_hash: str = field(HEX_DIGEST)
    worker: str = field(PEER_ID)
    model: str = field(HEX_DIGEST)
    verdict: str = field(choice("valid", "invalid", "inconclusive"))
    reason: str = field(text(512))
    metrics: VerifyMetrics = field(nested(VerifyMetrics))
    beacon_block: int = field(UINT64)
    beacon: bytes = field(binary(32))
    ts: int = field(UINT64)  # unix ms


@dataclass(frozen=True)
class AttestationsRequest:
    """Ask a peer for the attestations it holds for some jobs (the oracle, for what
    gossip did not bring it: it was down, or joined later)."""

    type: ClassVar[str] = "attestations_request"
    signed: ClassVar[bool] = True

    job_ids: tuple = field(sequence(HEX_DIGEST, 256))


@dataclass(frozen=True)
class AttestationSet:
    """Unsigned: every attestation in it is signed by its verifier."""

    type: ClassVar[str] = "attestations"
    signed: ClassVar[bool] = False

    items: tuple = field(sequence(blob(8192), 2048))


@dataclass(frozen=True)
class EvidenceRequest:
    type: ClassVar[str] = "evidence_request"
    signed: ClassVar[bool] = True

    hash: str = field(HEX_DIGEST)


@dataclass(frozen=True)
class Evidence:
    """Proof that a worker lied: its signed result for a client-signed job and a
    quorum of signed ``invalid`` attestations.  Unsigned: every part inside is
    signed, and its hash (the digest of this body) goes on chain with the slash."""

    type: ClassVar[str] = "evidence"
    signed: ClassVar[bool] = False

    job: bytes = field(blob(DEFAULT_MAX_FRAME))
    result: bytes = field(blob(DEFAULT_MAX_FRAME))
    attestations: tuple = field(sequence(blob(8192), 16))


@dataclass(frozen=True)
class ModelInfoRequest:
    """Asks a provider for a model file's size and chunk root (``/inferad/model/1.0.0``)."""

    type: ClassVar[str] = "model_info_request"
    signed: ClassVar[bool] = False

    sha256: str = field(HEX_DIGEST)


@dataclass(frozen=True)
class ModelInfo:
    """A provider's signed word on a model file: its size and the root of its chunk tree
    (proofs.chunks).  A provider that signs a wrong root is found out when the whole file's
    sha256 is checked, and is dropped by that fetcher."""

    type: ClassVar[str] = "model_info"
    signed: ClassVar[bool] = True

    sha256: str = field(HEX_DIGEST)
    name: str = field(text(128, 1))  # its label on that provider
    size: int = field(integer(1, MAX_MODEL_BYTES))
    root: bytes = field(binary(32))


@dataclass(frozen=True)
class ChunkRequest:
    type: ClassVar[str] = "chunk_request"
    signed: ClassVar[bool] = False

    sha256: str = field(HEX_DIGEST)
    index: int = field(integer(0, MAX_MODEL_BYTES // MAX_CHUNK_BYTES))


@dataclass(frozen=True)
class Chunk:
    """One chunk of a model file with its Merkle proof; unsigned: the proof checks it."""

    type: ClassVar[str] = "chunk"
    signed: ClassVar[bool] = False

    sha256: str = field(HEX_DIGEST)
    index: int = field(integer(0, MAX_MODEL_BYTES // MAX_CHUNK_BYTES))
    data: bytes = field(blob(MAX_CHUNK_BYTES))
    proof: tuple = field(sequence(binary(32), MAX_CHUNK_PROOF))


MESSAGE_TYPES: dict[str, type] = {
    cls.type: cls for cls in (JobRequest, JobResult, ExecRequest, Advert, Token, ErrorFrame, ReportRequest,
                              Report, ProofRequest, RewardProof, VerifyRequest, Attestation, EvidenceRequest,
                              Evidence, AttestationsRequest, AttestationSet, ModelInfoRequest, ModelInfo,
                              ChunkRequest, Chunk)
}


# --------------------------------------------------------------------------- codec


def _key_bytes(key: Any) -> bytes:
    if type(key) is not str:
        raise MalformedMessage("map keys must all be strings")
    # UTF-8 bytes order equals code point order, but not UTF-16 order (JavaScript's
    # default sort puts U+1F600 before U+FFFD); sorting the bytes says which is meant.
    return key.encode("utf-8", "surrogatepass")


def _sorted(obj: Any, depth: int = 0) -> Any:
    if depth > MAX_NESTING:
        raise MalformedMessage(f"nesting deeper than {MAX_NESTING}")
    if type(obj) is dict:
        return {k: _sorted(obj[k], depth + 1) for k in sorted(obj, key=_key_bytes)}
    if type(obj) is list:
        return [_sorted(v, depth + 1) for v in obj]
    return obj


def canonical(obj: Any) -> bytes:
    """Canonical msgpack: map keys sorted by their UTF-8 bytes, every header (int, str,
    bin, array, map) in its shortest form, floats as float64, str and bin kept apart."""
    return msgpack.packb(_sorted(obj), use_bin_type=True)


def digest(body: Any) -> str:
    """sha256 hex of a body's canonical encoding: job ids and result hashes."""
    return hashlib.sha256(canonical(body)).hexdigest()


def _signing_input(msg_type: str, body: Any) -> bytes:
    return _signing_prefix(msg_type) + canonical(body)


def _signing_prefix(msg_type: str) -> bytes:
    return b"inferad/%d/" % VERSION + msg_type.encode() + b"\0"


def sign(message: Any, key: SigningKey) -> bytes:
    """Encode and sign a message of a signed type with ``key``."""
    if not message.signed:
        raise TypeError(f"{message.type} messages are not signed; use encode_unsigned")
    return sign_body(message.type, unparse(message), key)


def sign_body(msg_type: str, body: Any, key: SigningKey) -> bytes:
    """Sign a raw body without validating it (for tools and tests that build odd messages)."""
    sig = key.sign(_signing_input(msg_type, body)).signature
    return canonical({"v": VERSION, "t": msg_type, "body": body, "pk": bytes(key.verify_key), "sig": sig})


def encode_unsigned(message: Any) -> bytes:
    if message.signed:
        raise TypeError(f"{message.type} messages must be signed; use sign")
    return canonical({"v": VERSION, "t": message.type, "body": unparse(message)})


@dataclass(frozen=True)
class Envelope:
    """A decoded, verified message.

    ``body`` is the raw map exactly as signed (ids and hashes are computed from
    it); ``message`` is its validated dataclass; ``signer`` the author's
    Ed25519 public key for signed types.
    """

    type: str
    body: dict
    message: Any
    signer: bytes | None

    @property
    def digest(self) -> str:
        return digest(self.body)

    @property
    def signer_peer_id(self) -> str:
        if self.signer is None:
            raise ValueError(f"{self.type} messages are unsigned")
        return peer_id_from_public_key(self.signer)


def _reject_ext(code: int, data: bytes) -> Any:
    raise MalformedMessage("msgpack extension types are not allowed")


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> Envelope:
    """Decode and verify one message; raises a WireError subclass on anything wrong.

    In this order (the first failure is the error): FrameTooLarge over ``max_size``;
    MalformedMessage for bytes that are not one canonical msgpack map, a version
    other than 1, an unknown type, an envelope key other than ``v, t, body`` (and
    ``pk, sig`` for signed types), or no ``body``; BadSignature for a signed type
    whose ``pk``/``sig`` are missing, malformed or do not verify; SchemaError for a
    body that is not a valid body of its type ``t``, in its one encoding.  Nothing
    beyond the envelope is parsed before the signature verifies.
    """
    if type(data) is not bytes:
        raise MalformedMessage("expected bytes")
    if len(data) > max_size:
        raise FrameTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_reject_ext,
            max_str_len=max_size, max_bin_len=max_size,
            max_array_len=max(MAX_TOKENS_LIMIT, MAX_PROMPT_TOKENS) + 1, max_map_len=64,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise MalformedMessage(f"not msgpack: {type(exc).__name__}") from None
    if type(obj) is not dict:
        raise MalformedMessage("a message must be a map")
    if canonical(obj) != data:
        raise MalformedMessage("message is not canonically encoded")
    if obj.get("v") != VERSION:
        raise MalformedMessage(f"unsupported protocol version {obj.get('v')!r}")
    msg_type = obj.get("t")
    cls = MESSAGE_TYPES.get(msg_type) if type(msg_type) is str else None
    if cls is None:
        raise MalformedMessage(f"unknown message type {msg_type!r}")
    allowed_keys = {"v", "t", "body", "pk", "sig"} if cls.signed else {"v", "t", "body"}
    if not set(obj) <= allowed_keys or "body" not in obj:
        raise MalformedMessage(f"a {msg_type} envelope has exactly the keys {sorted(allowed_keys)}")
    body_bytes = canonical(obj["body"])
    signer = None
    if cls.signed:
        pk, sig = obj.get("pk"), obj.get("sig")
        if type(pk) is not bytes or len(pk) != 32 or type(sig) is not bytes or len(sig) != 64:
            raise BadSignature(f"a {msg_type} needs pk (32 bytes) and sig (64 bytes)")
        try:
            VerifyKey(pk).verify(_signing_prefix(msg_type) + body_bytes, sig)
        except (BadSignatureError, ValueError):
            raise BadSignature(f"{msg_type} signature does not verify") from None
        signer = pk
    message = parse(cls, obj["body"], f"{msg_type}.body")
    if canonical(unparse(message)) != body_bytes:  # parse refuses every other form; this is the backstop
        raise SchemaError(f"{msg_type}.body is not in its one canonical form")
    return Envelope(type=msg_type, body=obj["body"], message=message, signer=signer)


# --------------------------------------------------------------------------- framing


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length as an unsigned LEB128 varint."""
    n, prefix = len(payload), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        prefix.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(prefix) + payload


class FrameDecoder:
    """Incremental varint-length-prefixed frame parser (feed bytes, take frames).

    A length above ``max_frame`` raises :class:`FrameTooLarge` as soon as the
    prefix proves it, before any payload is buffered.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None if more bytes are needed."""
        length = shift = 0
        for pos, byte in enumerate(self._buffer):
            length |= (byte & 0x7F) << shift
            shift += 7
            if length > self.max_frame:
                raise FrameTooLarge(f"frame length exceeds the {self.max_frame}-byte limit")
            if not byte & 0x80:
                start = pos + 1
                break
        else:
            return None
        if len(self._buffer) - start < length:
            return None
        frame = bytes(self._buffer[start:start + length])
        del self._buffer[:start + length]
        return frame


# --------------------------------------------------------------------------- identity

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id_from_public_key(pk: bytes) -> str:
    """The libp2p peer id (``12D3KooW…``) of an Ed25519 public key.

    Identity multihash of the protobuf ``PublicKey{Type: Ed25519, Data: pk}``,
    base58btc: the same id every libp2p implementation derives.
    """
    if len(pk) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    protobuf = b"\x08\x01\x12\x20" + pk
    return _base58(b"\x00" + bytes([len(protobuf)]) + protobuf)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key an ``12D3KooW…`` peer id embeds (inverse of peer_id_from_public_key)."""
    try:
        n = 0
        for char in peer_id:
            n = n * 58 + _B58.index(char)
    except ValueError:
        raise ValueError(f"{peer_id!r} is not base58") from None
    raw = n.to_bytes(38, "big") if n < 1 << 304 else b""
    if raw[:6] != b"\x00\x24\x08\x01\x12\x20":
        raise ValueError(f"{peer_id!r} does not embed an Ed25519 key")
    return raw[6:]


def error_frame(code: str, message: str) -> bytes:
    """An encoded ``error`` frame (messages are clipped to the schema's limit)."""
    return encode_unsigned(ErrorFrame(code=code, message=message[:2048]))



def provider_key(model_sha256: str) -> str:
    """The DHT provider key of a model, as a hex sha2-256 multihash.

    It is the multihash of ``/inferad/model/<sha256>``: the key any libp2p
    implementation derives from the CIDv1 of that name, so go, js and rust
    nodes can provide and find the same records.
    """
    return "1220" + hashlib.sha256(f"/inferad/model/{model_sha256}".encode()).hexdigest()
