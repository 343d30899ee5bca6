"""Slots: N sequences sharing one llama.cpp context, scheduled one decode step at a time (sans-I/O).

Two rules, as h11 states its own: every slot transition lives in this file, and this file knows
nothing of threads, trio or llama.cpp.  The engine's loop (:class:`inferad.engine.Engine`) asks
:meth:`Scheduler.next_batch` what to decode, decodes it, and reports back what it sampled
(:meth:`Scheduler.sampled`) and which slots are done (:meth:`Scheduler.release`).

A slot is one sequence id of the context's KV cache, with its own share of the context
(``n_ctx_slot`` positions).  Its life, after llama.cpp's server (``server_slot``,
tools/server/server-context.cpp)::

    IDLE --assign--> PREFILL --last prompt row planned--> GENERATING --release--> IDLE
                         \\--(a scoring task: every row planned)--> SCORED --release--> IDLE

One step (``update_slots`` there) is one batch of at most ``n_batch`` rows:

1. one row for each GENERATING slot: the token it sampled last, at its next position,
   with logits (so a running stream advances every step, whatever else is waiting);
2. then prompt rows of PREFILL slots, oldest first, until the batch is full: so a long
   prompt is prefilled in chunks between decode steps, and never stalls a running stream
   for more than one batch.  A generation wants logits at its last prompt row only; a
   scoring task at every row from ``logits_from`` on, at most ``max_outputs`` rows with
   logits per step (each is a vocabulary of floats: 1 MiB for a 262k vocabulary).

Tasks that find every slot busy wait in a queue, first come first served, and take the
next slot released.  Cancelling a waiting task drops it; cancelling a running one frees
its slot (the engine then clears that sequence from the KV cache).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


class SlotState(enum.Enum):
    IDLE = "idle"  # no task
    PREFILL = "prefill"  # evaluating the task's tokens
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
    """

    id: Hashable
    tokens: tuple[int, ...]
    logits_from: int | None = None

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

    def submit(self, task: Task) -> int | None:
        """Give ``task`` an idle slot (its index), or queue it (None).
        Raises ValueError for a task that cannot fit a slot's context."""
        if not task.tokens or len(task.tokens) > self.n_ctx_slot:
            raise ValueError(f"task {task.id!r}: {len(task.tokens)} tokens to evaluate; a slot holds 1 to "
                             f"{self.n_ctx_slot}")
        idle = next((s for s in self.slots if s.state is SlotState.IDLE), None)
        if idle is None:
            self.waiting.append(task)
            return None
        self._assign(idle, task)
        return idle.index

    def cancel(self, task_id: Hashable) -> int | None:
        """Drop a waiting task, or release a running one's slot: that slot's index (its sequence must
        be cleared from the KV cache), else None."""
        for task in self.waiting:
            if task.id == task_id:
                self.waiting.remove(task)
                return None
        for slot in self.slots:
            if slot.task is not None and slot.task.id == task_id:
                self.release(slot.index)
                return slot.index
        return None

    def sampled(self, index: int, token: int) -> None:
        """The engine sampled ``token`` for a generating slot; it is evaluated next step.
        Raises SlotStateError unless the slot generates and has room for the token."""
        slot = self.slots[index]
        slot._expect("sampled", SlotState.GENERATING)
        if slot.n_past >= self.n_ctx_slot:
            raise SlotStateError(f"slot {index}: its {self.n_ctx_slot} positions are full")
        slot.last = token

    def release(self, index: int) -> Task | None:
        """The slot's task is over: the slot goes idle, and takes the next waiting task (returned)."""
        slot = self.slots[index]
        slot._expect("release", SlotState.PREFILL, SlotState.GENERATING, SlotState.SCORED)
        slot.state, slot.task, slot.n_past, slot.last = SlotState.IDLE, None, 0, None
        if self.waiting:
            task = self.waiting.popleft()
            self._assign(slot, task)
            return task
        return None

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
                logits = last if task.generates else pos >= task.logits_from
                if logits and outputs >= self.max_outputs:
                    break
                rows.append(Row(slot.index, task.tokens[pos], pos, logits))
                outputs += logits
                slot.n_past += 1
                if last:
                    slot.state = SlotState.GENERATING if task.generates else SlotState.SCORED
        return rows

    def busy(self) -> bool:
        """Whether any slot holds a task."""
        return any(s.state is not SlotState.IDLE for s in self.slots)

    def _assign(self, slot: Slot, task: Task) -> None:
        slot._expect("assign", SlotState.IDLE)
        self._tickets += 1
        slot.state, slot.task, slot.n_past, slot.last, slot.ticket = SlotState.PREFILL, task, 0, None, self._tickets
