r"""Slots: N sequences sharing one llama.cpp context, scheduled one decode step at a time (sans-I/O).

Two rules, as h11 states its own: every slot transition lives in this file, and this file knows
nothing of threads, trio or llama.cpp.  The engine's loop (:class:`inferad.engine.Engine`) asks
:meth:`Scheduler.next_batch` what to decode, decodes it, and reports back what it sampled
(:meth:`Scheduler.sampled`) and which slots are done (:meth:`Scheduler.release`).

A slot is one sequence id of the context's KV cache, with its own share of the context
(``n_ctx_slot`` positions).  Its life, after llama.cpp's server (``server_slot``,
tools/server/server-context.cpp)::

    IDLE --seat--> PREFILL --last prompt row planned--> GENERATING --release--> IDLE
      \               \--(a scoring task: every row planned)--> SCORED --release--> IDLE
       \--seat--> RESERVED --its lead's last prompt row planned--> GENERATING

A generation with ``n`` choices takes n slots at once: the first (its lead) prefills the
prompt, the others wait RESERVED; once the prompt is in, the engine copies the lead's KV
cache to them (``llama_memory_seq_cp``), every choice samples its first token from the
lead's last logits row, and from then on each decodes on its own.  So the prompt is
evaluated once for all n choices.

One step (``update_slots`` there) is one batch of at most ``n_batch`` rows:

1. one row for each GENERATING slot: the token it sampled last, at its next position,
   with logits (so a running stream advances every step, whatever else is waiting);
2. then prompt rows of PREFILL slots, oldest first, until the batch is full: so a long
   prompt is prefilled in chunks between decode steps, and never stalls a running stream
   for more than one batch.  A generation wants logits at its last prompt row only; a
   scoring task at every row from ``logits_from`` on, at most ``max_outputs`` rows with
   logits per step (each is a vocabulary of floats: 1 MiB for a 262k vocabulary).

Submitted tasks wait in a queue, first come first served; :meth:`Scheduler.seat` gives the
head of the queue its slots as soon as that many are idle (a task of n choices is not
overtaken by smaller ones behind it).  Cancelling a waiting task drops it; cancelling a
running one frees its slots (the engine then clears their sequences from the KV cache).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


class SlotState(enum.Enum):
    IDLE = "idle"  # no task
    PREFILL = "prefill"  # evaluating the task's tokens
    RESERVED = "reserved"  # a further choice of a generation in PREFILL: takes the prompt's KV cache when it is in
    GENERATING = "generating"  # prompt done: one sampled token per step
    SCORED = "scored"  # a scoring task whose rows are all planned: released once the engine read them


class SlotStateError(Exception):
    """An event the slot's state does not allow; the slot is left unchanged."""


@dataclass(frozen=True)
class Task:
    """Work for one slot.

    ``tokens``: what to evaluate first (prompt, then any output already delivered).
    ``logits_from``: None for a generation (logits at the last row, then it samples);
    for a scoring task, the first row whose logits are wanted (every later row too).
    ``n``: a generation's choices, one slot each.
    ``logits_at``: a scoring task's rows with logits, when not every row from ``logits_from``
    (a verifier re-scoring a sample of the output's positions).
    """

    id: Hashable
    tokens: tuple[int, ...]
    logits_from: int | None = None
    n: int = 1
    logits_at: frozenset[int] | None = None

    @property
    def generates(self) -> bool:
        return self.logits_from is None


@dataclass(frozen=True)
class Row:
    """One row of a batch: ``token`` at position ``pos`` of sequence ``slot``; ``logits`` wanted."""

    slot: int
    token: int
    pos: int
    logits: bool


@dataclass
class Slot:
    index: int
    state: SlotState = SlotState.IDLE
    task: Task | None = None
    n_past: int = 0  # positions planned into the KV cache
    last: int | None = None  # the token sampled last, evaluated next step (GENERATING)
    ticket: int = 0  # admission order: the oldest prefill goes first

    def _expect(self, event: str, *states: SlotState) -> None:
        if self.state not in states:
            raise SlotStateError(f"slot {self.index}: {event} is not allowed in state {self.state.value}")


@dataclass
class Scheduler:
    """The slots of one context and the queue in front of them; see the module docstring.

    Args:   n_slots: sequences decoded side by side.
            n_batch: rows per decode step (llama.cpp's ``n_batch``).
            n_ctx_slot: positions each slot may hold (prompt + output).
            max_outputs: rows with logits per step.
    """

    n_slots: int
    n_batch: int
    n_ctx_slot: int
    max_outputs: int = 64
    slots: list[Slot] = field(init=False)
    waiting: deque[Task] = field(init=False, default_factory=deque)
    _tickets: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.n_slots < 1 or self.n_batch < self.n_slots or self.max_outputs < self.n_slots:
            raise ValueError(f"{self.n_slots} slots need n_batch and max_outputs of at least that many "
                             f"(got {self.n_batch} and {self.max_outputs})")
        self.slots = [Slot(i) for i in range(self.n_slots)]

    # ------------------------------------------------------------------ events

    def submit(self, task: Task) -> None:
        """Queue ``task``; :meth:`seat` gives it its slots.
        Raises ValueError for a task that cannot fit a slot's context, or wants more slots than there are."""
        if not task.tokens or len(task.tokens) > self.n_ctx_slot:
            raise ValueError(f"task {task.id!r}: {len(task.tokens)} tokens to evaluate; a slot holds 1 to "
                             f"{self.n_ctx_slot}")
        if not 1 <= task.n <= self.n_slots or (task.n > 1 and not task.generates):
            raise ValueError(f"task {task.id!r}: {task.n} choices; this context decodes 1 to {self.n_slots} "
                             f"side by side (only a generation has several)")
        self.waiting.append(task)

    def seat(self) -> list[tuple[Task, list[int]]]:
        """Give waiting tasks, oldest first, the slots they need while enough are idle: each task
        seated now with its slots' indices (the lead, which prefills, first)."""
        seated = []
        while self.waiting:
            idle = [s for s in self.slots if s.state is SlotState.IDLE][: self.waiting[0].n]
            if len(idle) < self.waiting[0].n:
                break
            task = self.waiting.popleft()
            self._tickets += 1
            for slot in idle:
                slot._expect("seat", SlotState.IDLE)
                slot.state = SlotState.PREFILL if slot is idle[0] else SlotState.RESERVED
                slot.task, slot.n_past, slot.last, slot.ticket = task, 0, None, self._tickets
            seated.append((task, [s.index for s in idle]))
        return seated

    def cancel(self, task_id: Hashable) -> list[int]:
        """Drop a waiting task, or release a running one's slots: those slots' indices (their sequences
        must be cleared from the KV cache), empty when it was waiting or is unknown."""
        for task in self.waiting:
            if task.id == task_id:
                self.waiting.remove(task)
                return []
        held = [s.index for s in self.slots if s.task is not None and s.task.id == task_id]
        for index in held:
            self.release(index)
        return held

    def sampled(self, index: int, token: int) -> None:
        """The engine sampled ``token`` for a generating slot; it is evaluated next step.
        Raises SlotStateError unless the slot generates and has room for the token."""
        slot = self.slots[index]
        slot._expect("sampled", SlotState.GENERATING)
        if slot.n_past >= self.n_ctx_slot:
            raise SlotStateError(f"slot {index}: its {self.n_ctx_slot} positions are full")
        slot.last = token

    def release(self, index: int) -> None:
        """The slot's task (or this choice of it) is over: the slot goes idle (:meth:`seat` fills it)."""
        slot = self.slots[index]
        slot._expect("release", SlotState.PREFILL, SlotState.RESERVED, SlotState.GENERATING, SlotState.SCORED)
        slot.state, slot.task, slot.n_past, slot.last = SlotState.IDLE, None, 0, None

    # ------------------------------------------------------------------ planning

    def next_batch(self) -> list[Row]:
        """The rows of the next decode step (empty when there is nothing to do); see the module docstring."""
        rows: list[Row] = []
        for slot in self.slots:
            if slot.state is SlotState.GENERATING and slot.last is not None:
                rows.append(Row(slot.index, slot.last, slot.n_past, True))
                slot.n_past += 1
                slot.last = None
        outputs = len(rows)
        for slot in sorted((s for s in self.slots if s.state is SlotState.PREFILL), key=lambda s: s.ticket):
            task = slot.task
            while slot.state is SlotState.PREFILL and len(rows) < self.n_batch:
                pos = slot.n_past
                last = pos == len(task.tokens) - 1
                if task.generates:
                    logits = last
                else:
                    logits = pos in task.logits_at if task.logits_at is not None else pos >= task.logits_from
                if logits and outputs >= self.max_outputs:
                    break
                rows.append(Row(slot.index, task.tokens[pos], pos, logits))
                outputs += logits
                slot.n_past += 1
                if last:
                    slot.state = SlotState.GENERATING if task.generates else SlotState.SCORED
                    for choice in self.slots:  # the further choices start from the same prompt
                        if choice.state is SlotState.RESERVED and choice.task is task:
                            choice.state, choice.n_past = SlotState.GENERATING, slot.n_past
        return rows

    def busy(self) -> bool:
        """Whether any slot holds a task."""
        return any(s.state is not SlotState.IDLE for s in self.slots)
