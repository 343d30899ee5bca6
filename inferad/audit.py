"""Checking a receipt on this machine: ``inferad verify RECEIPT``.

The receipt's signatures and ids are checked as it is parsed (:mod:`inferad.receipt`); here the
result is re-scored on the local copy of the job's model, exactly as a drawn verifier re-scores
it (:func:`inferad.verification.rescore`), and each position is described for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inferad.receipt import Receipt
from proofs.check import INCONCLUSIVE, Position, Thresholds


@dataclass(frozen=True)
class Audit:
    verdict: str  # valid | invalid | inconclusive
    reason: str
    metrics: dict = field(default_factory=dict)
    positions: list[list[dict]] = field(default_factory=list)  # by choice, one row per output token

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "metrics": self.metrics, "positions": self.positions}


def audit(receipt: Receipt, model_path: str | None = None, *, adapter_path: str | None = None,
          threads: int = 0) -> Audit:
    """Re-score ``receipt``'s result on the job's model (and LoRA adapter): the catalog copy or the
    cached copy of its sha256, or the GGUF file ``model_path`` (``adapter_path``), which must hash
    to it.  Inconclusive when a file is not on this machine."""
    from inferad.engine import Engine, EngineError
    from inferad.verification import rescore

    job, result = receipt.job.message, receipt.result.message
    model, why = _file(job.model, model_path, "model", "--model")
    adapter, why_adapter = _file(job.adapter, adapter_path, "adapter", "--adapter") if job.adapter else (None, "")
    if model is None or why_adapter:
        return Audit(INCONCLUSIVE, why or why_adapter)
    try:
        engine = Engine(model, n_ctx=0, n_threads=threads, n_slots=1, adapter=adapter)
    except EngineError as exc:
        return Audit(INCONCLUSIVE, f"cannot load the model: {exc}")
    try:
        thresholds = Thresholds()
        verdict = rescore(engine, receipt.job_id, job, result, thresholds)
        rows = []
        for index, choice in enumerate(result.all_choices()):
            try:
                positions = engine.score(engine.prompt_tokens(job), choice.output_tokens, job.params,
                                         job_id=receipt.job_id, choice=index, slack=thresholds.nucleus_slack)
            except EngineError:
                positions = []
            rows.append([_row(i, p, engine) for i, p in enumerate(positions)])
    finally:
        engine.close()
    return Audit(verdict.verdict, verdict.reason, verdict.metrics, rows)


def _file(ref, path: str | None, what: str, option: str):
    """(the local file of ``ref``, "") or (None, why not): ``path``, else the catalog's or the cache's
    copy of its sha256."""
    from inferad.model_cache import local_model
    from inferad.models import ModelError, catalog_name, resolve

    sha = ref.sha256
    try:
        found = resolve(path or catalog_name(sha)) if path or catalog_name(sha) else local_model(f"sha256:{sha}")
    except ModelError as exc:
        return None, f"{what} {ref.name} ({sha[:12]}…) is not on this machine: {exc} (or pass {option} PATH)"
    if found.sha256 != sha:
        return None, f"{path} has sha256 {found.sha256[:12]}…, the job's {what} is {sha[:12]}…"
    return found, ""


def _row(index: int, p: Position, engine) -> dict:
    row = {"index": index, "token": p.token, "text": engine._piece(p.token).decode(errors="replace"),
           "logprob": round(p.logprob, 4), "gap": round(p.top_logprob - p.logprob, 4)}
    if p.drawn is not None:
        row.update(u=round(p.drawn.u, 6), interval=[round(p.drawn.lo, 6), round(p.drawn.hi, 6)],
                   miss=round(p.drawn.miss(), 6))
    if p.forbidden:
        row["forbidden"] = True
    return row
