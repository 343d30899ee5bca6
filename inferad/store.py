"""The node's durable record: jobs and results in LevelDB (DESIGN §9).

Keys are ``job/<job_id>`` and ``result/<job_id>``; values are msgpack maps that
keep the signed envelopes byte for byte, so anything read back can be
re-verified by anyone.  Writes that a peer will rely on (accepting a job id,
storing a result before acknowledging it) are synced to disk, so they survive
``kill -9`` and power loss.

plyvel is blocking: trio code holds an :class:`AsyncStore`, which runs each
call in a worker thread.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import plyvel
import trio

JOB = b"job/"
RESULT = b"result/"
SERVED = b"served/"  # served/<epoch:012d>/<job id>: jobs this node ran, for settlement
SETTLED = b"settled/"  # oracle: settled/<job id> -> epoch it was paid in
SETTLEMENT = b"settlement/"  # oracle: settlement/<epoch:012d> -> root, cumulative rewards, proofs
ATTESTATION = b"att/"  # att/<job id>/<verifier peer id> -> signed attestation, from every node
EVIDENCE = b"evidence/"  # evidence/<hash> -> evidence message (a proven lie)
EVIDENCE_OF = b"evidence-of/"  # evidence-of/<job id> -> evidence hash
SLASHED = b"slashed/"  # oracle: slashed/<job id> -> epoch of the slash
# Signed (job, result) pairs kept aside: "held/" by a verifier that found a
# result invalid (the evidence), "deferred/" by the oracle until a job's draw is decided.
PAIR_KINDS = (b"held/", b"deferred/")
PEER = b"peer/"  # peer/<peer id> -> its advertised addresses, to dial again after a restart


class StoreError(Exception):
    """The database cannot be opened or read; the message says what to do."""


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    job: bytes  # the client-signed envelope as received
    received_at: int  # unix ms
    status: str  # accepted | done | failed | interrupted
    error: str | None = None
    result: bytes | None = None  # the worker-signed envelope, once done
    meta: dict | None = None  # role (gateway|worker), workers tried, gateway peer…

    def to_json(self) -> dict:
        """A JSON-friendly view with the envelopes decoded (they were verified on the way in);
        every field is shown, defaults included, although the signed bodies leave them out."""
        from p2p import wire

        view = {"job_id": self.job_id, "status": self.status, "received_at": self.received_at,
                "job": jsonable(wire.view(wire.decode(self.job).message))}
        if self.error:
            view["error"] = self.error
        view.update(self.meta or {})
        if self.result is not None:
            result = wire.decode(self.result)
            view["result"] = jsonable(wire.view(result.message))
            view["result_hash"] = result.digest
            view["worker_signature_valid"] = True  # decode() verified it, or it raised
        return view


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = plyvel.DB(str(self.path), create_if_missing=True)
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StoreError(
                    f"database {self.path} is in use by another process "
                    "(is a node running on this home? ask it instead, or stop it)"
                ) from None
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except plyvel.CorruptionError as exc:
            raise StoreError(f"database {self.path} is corrupt: {exc}") from None
        # Check-then-write of a job id must be atomic across engine threads.
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ jobs

    def has_job(self, job_id: str) -> bool:
        return self._db.get(JOB + job_id.encode()) is not None

    def accept_job(self, job_id: str, job: bytes, *, resume: Callable[[dict], bool] | None = None,
                   **meta) -> bool:
        """Record a job id as taken (synced); False if it was seen before (a replay), unless
        ``resume(its record)`` says that earlier run may be continued (its record is replaced)."""
        key = JOB + job_id.encode()
        with self._lock:
            if (seen := self._db.get(key)) is not None and not (resume and resume(msgpack.unpackb(seen))):
                return False
            record = {"job": job, "received_at": _now_ms(), "status": "accepted", "meta": meta}
            self._db.put(key, msgpack.packb(record), sync=True)
            return True

    def finish_job(self, job_id: str, result: bytes, **meta) -> None:
        """Store the signed result, synced, before the client is told it exists."""
        with self._lock:
            batch = self._db.write_batch(sync=True)
            batch.put(RESULT + job_id.encode(), result)
            batch.put(JOB + job_id.encode(), self._updated(job_id, status="done", **meta))
            batch.write()

    def record_served(self, job_id: str, epoch: int) -> None:
        self._db.put(SERVED + b"%012d/" % epoch + job_id.encode(), b"", sync=True)

    def served_between(self, after: int, upto: int) -> list[tuple[bytes, bytes]]:
        """(job, result) envelopes of the jobs this node ran in epochs (after, upto]."""
        out = []
        start, stop = SERVED + b"%012d/" % (after + 1), SERVED + b"%012d/" % (upto + 1)
        for key, _ in self._db.iterator(start=start, stop=stop):
            job_id = key.rsplit(b"/", 1)[1].decode()
            record = self.job(job_id)
            if record is not None and record.result is not None:
                out.append((record.job, record.result))
        return out

    def save_settlement(self, epoch: int, record: dict, job_ids: list[str]) -> None:
        with self._lock:
            batch = self._db.write_batch(sync=True)
            batch.put(SETTLEMENT + b"%012d" % epoch, msgpack.packb(record))
            for job_id in job_ids:
                batch.put(SETTLED + job_id.encode(), b"%d" % epoch)
            batch.write()

    def drop_settlements_after(self, epoch: int) -> int:
        """Forget settlements recorded for epochs after ``epoch`` (their transaction never
        landed) and the jobs they marked paid; how many were dropped."""
        with self._lock:
            stale = [(key, msgpack.unpackb(raw, strict_map_key=False))
                     for key, raw in self._db.iterator(start=SETTLEMENT + b"%012d" % (epoch + 1),
                                                       stop=SETTLEMENT + b"\xff")]
            batch = self._db.write_batch(sync=True)
            for key, record in stale:
                batch.delete(key)
                for job_id in record.get("job_ids", ()):
                    batch.delete(SETTLED + job_id.encode())
            batch.write()
        return len(stale)

    def settled_jobs(self) -> list[str]:
        return [key[len(SETTLED):].decode() for key, _ in self._db.iterator(prefix=SETTLED)]

    def is_settled(self, job_id: str) -> bool:
        return self._db.get(SETTLED + job_id.encode()) is not None

    def latest_settlement(self) -> dict | None:
        for _, raw in self._db.iterator(prefix=SETTLEMENT, reverse=True):
            return msgpack.unpackb(raw, strict_map_key=False)
        return None

    def update_meta(self, job_id: str, **meta) -> None:
        with self._lock:
            self._db.put(JOB + job_id.encode(), self._updated(job_id, **meta), sync=True)

    def remember_peer(self, peer_id: str, addrs: list[str]) -> None:
        self._db.put(PEER + peer_id.encode(), msgpack.packb(addrs[:4]))

    def remembered_peers(self, limit: int = 64) -> dict[str, list[str]]:
        found = {}
        for key, raw in self._db.iterator(prefix=PEER):
            found[key[len(PEER):].decode()] = msgpack.unpackb(raw)
            if len(found) >= limit:
                break
        return found

    # ------------------------------------------------------------------ verification

    def put_attestation(self, job_id: str, verifier: str, data: bytes) -> bool:
        """Keep a signed attestation; False if this verifier's one for the job is already here."""
        key = ATTESTATION + job_id.encode() + b"/" + verifier.encode()
        with self._lock:
            if self._db.get(key) is not None:
                return False
            self._db.put(key, data, sync=True)
            return True

    def attestations(self, job_id: str | None = None) -> list[bytes]:
        prefix = ATTESTATION + (job_id.encode() + b"/" if job_id else b"")
        return [raw for _, raw in self._db.iterator(prefix=prefix)]

    def put_pair(self, kind: bytes, job_id: str, job: bytes, result: bytes) -> None:
        assert kind in PAIR_KINDS
        self._db.put(kind + job_id.encode(), msgpack.packb([job, result]), sync=True)

    def pair(self, kind: bytes, job_id: str) -> tuple[bytes, bytes] | None:
        raw = self._db.get(kind + job_id.encode())
        return None if raw is None else tuple(msgpack.unpackb(raw))

    def pairs(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        return [tuple(msgpack.unpackb(raw)) for _, raw in self._db.iterator(prefix=kind)]

    def drop_pair(self, kind: bytes, job_id: str) -> None:
        self._db.delete(kind + job_id.encode(), sync=True)

    def put_evidence(self, evidence_hash: str, job_id: str, data: bytes) -> None:
        with self._db.write_batch(sync=True) as batch:
            batch.put(EVIDENCE + evidence_hash.encode(), data)
            batch.put(EVIDENCE_OF + job_id.encode(), evidence_hash.encode())

    def evidence(self, key: str) -> bytes | None:
        """Evidence by its hash, or by the id of the job it convicts."""
        found = self._db.get(EVIDENCE_OF + key.encode())
        return self._db.get(EVIDENCE + (found or key.encode()))

    def mark_slashed(self, job_id: str, epoch: int) -> None:
        self._db.put(SLASHED + job_id.encode(), b"%d" % epoch, sync=True)

    def is_slashed(self, job_id: str) -> bool:
        return self._db.get(SLASHED + job_id.encode()) is not None

    def fail_job(self, job_id: str, error: str) -> None:
        with self._lock:
            self._db.put(JOB + job_id.encode(), self._updated(job_id, status="failed", error=error))

    def _updated(self, job_id: str, **changes) -> bytes:
        raw = self._db.get(JOB + job_id.encode())
        if raw is None:
            raise KeyError(job_id)
        record = msgpack.unpackb(raw)
        meta = record.setdefault("meta", {})
        for key, value in changes.items():
            if key in ("status", "error"):
                record[key] = value
            else:
                meta[key] = value
        return msgpack.packb(record)

    def job(self, job_id: str) -> JobRecord | None:
        raw = self._db.get(JOB + job_id.encode())
        return None if raw is None else self._record(job_id, raw)

    def jobs(self) -> Iterator[JobRecord]:
        """Every job, in job-id order."""
        for key, raw in self._db.iterator(prefix=JOB):
            yield self._record(key[len(JOB):].decode(), raw)

    def _record(self, job_id: str, raw: bytes) -> JobRecord:
        record = msgpack.unpackb(raw)
        result = self._db.get(RESULT + job_id.encode())
        return JobRecord(job_id=job_id, job=record["job"], received_at=record["received_at"],
                         status=record["status"], error=record.get("error"), result=result,
                         meta=record.get("meta") or {})

    def mark_interrupted(self) -> int:
        """After a crash: jobs accepted but never finished become ``interrupted``."""
        stale = [key for key, raw in self._db.iterator(prefix=JOB)
                 if msgpack.unpackb(raw)["status"] == "accepted"]
        with self._lock:
            for key in stale:
                job_id = key[len(JOB):].decode()
                self._db.put(key, self._updated(job_id, status="interrupted"))
        return len(stale)


T = TypeVar("T")


class AsyncStore:
    """A :class:`Store` for trio code: ``await store.accept_job(...)`` runs ``Store.accept_job``
    in a worker thread, as ``trio.wrap_file`` does for a file.

    At most ``threads`` calls run at once (default 4: LevelDB serialises writes anyway,
    and reads are short), so a burst of requests cannot take every thread of trio's pool.
    :meth:`run` runs several calls in one thread; ``sync`` is the blocking store itself,
    for them.
    """

    def __init__(self, store: Store, *, threads: int = 4) -> None:
        self.sync = store
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread (its result)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.run(method, *args, **kwargs)

        call.__name__ = name
        return call


def _now_ms() -> int:
    return int(time.time() * 1000)
