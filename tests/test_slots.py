"""The slot scheduler, as transcripts: submit, plan a step, report what was sampled, release."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferad.slots import Row, Scheduler, SlotState, SlotStateError, Task


def generation(name, n, choices=1):
    return Task(id=name, tokens=tuple(range(100, 100 + n)), n=choices)


def submitted(s, *tasks):
    """Submit ``tasks`` and seat what fits: the slots of each seated task, by id."""
    for task in tasks:
        s.submit(task)
    return {task.id: slots for task, slots in s.seat()}


def test_a_lone_prompt_is_prefilled_in_one_step_with_logits_at_its_last_row_then_generates():
    s = Scheduler(n_slots=2, n_batch=8, n_ctx_slot=32)
    assert submitted(s, generation("a", 3)) == {"a": [0]}
    assert s.next_batch() == [Row(0, 100, 0, False), Row(0, 101, 1, False), Row(0, 102, 2, True)]
    assert s.slots[0].state is SlotState.GENERATING
    s.sampled(0, 7)
    assert s.next_batch() == [Row(0, 7, 3, True)]


def test_a_prompt_longer_than_n_batch_is_prefilled_over_several_steps_beside_running_streams():
    s = Scheduler(n_slots=2, n_batch=4, n_ctx_slot=32)
    submitted(s, generation("running", 1))
    s.next_batch()
    s.sampled(0, 7)
    submitted(s, generation("long", 6))
    first = s.next_batch()
    assert first[0] == Row(0, 7, 1, True)  # the running stream advances every step
    assert [r.pos for r in first[1:]] == [0, 1, 2] and not any(r.logits for r in first[1:])
    s.sampled(0, 8)
    second = s.next_batch()
    assert second[0] == Row(0, 8, 2, True)
    assert [(r.pos, r.logits) for r in second[1:]] == [(3, False), (4, False), (5, True)]


def test_tasks_beyond_the_slots_wait_and_take_the_next_slot_released():
    s = Scheduler(n_slots=1, n_batch=8, n_ctx_slot=32)
    assert submitted(s, generation("a", 2), generation("b", 2)) == {"a": [0]}
    s.next_batch()
    s.release(0)
    assert submitted(s) == {"b": [0]}
    assert s.slots[0].task.id == "b" and s.slots[0].n_past == 0


def test_cancelling_a_waiting_task_never_occupies_a_slot():
    s = Scheduler(n_slots=1, n_batch=8, n_ctx_slot=32)
    submitted(s, generation("a", 2), generation("b", 2))
    assert s.cancel("b") == []
    s.release(0)
    assert s.seat() == [] and not s.busy()


def test_cancelling_a_running_task_frees_its_slot_for_the_next_step():
    s = Scheduler(n_slots=1, n_batch=8, n_ctx_slot=32)
    submitted(s, generation("a", 2))
    s.next_batch()
    assert s.cancel("a") == [0]
    assert s.next_batch() == [] and not s.busy()


def test_n_choices_prefill_the_prompt_once_then_each_decodes_in_its_own_slot():
    s = Scheduler(n_slots=4, n_batch=8, n_ctx_slot=32)
    assert submitted(s, generation("three", 2, choices=3)) == {"three": [0, 1, 2]}
    assert [s.slots[i].state for i in range(3)] == [SlotState.PREFILL, SlotState.RESERVED, SlotState.RESERVED]
    assert s.next_batch() == [Row(0, 100, 0, False), Row(0, 101, 1, True)]  # the prompt, in the lead only
    assert all(s.slots[i].state is SlotState.GENERATING and s.slots[i].n_past == 2 for i in range(3))
    for i, token in enumerate((7, 8, 9)):  # each choice samples from the lead's last row
        s.sampled(i, token)
    assert s.next_batch() == [Row(0, 7, 2, True), Row(1, 8, 2, True), Row(2, 9, 2, True)]
    s.release(1)  # one choice ends; the others go on
    s.sampled(0, 5)
    s.sampled(2, 6)
    assert s.next_batch() == [Row(0, 5, 3, True), Row(2, 6, 3, True)]


def test_a_task_of_n_choices_waits_for_n_idle_slots_and_is_not_overtaken():
    s = Scheduler(n_slots=2, n_batch=8, n_ctx_slot=32)
    assert submitted(s, generation("a", 2), generation("pair", 2, choices=2), generation("b", 2)) == {"a": [0]}
    s.next_batch()
    s.release(0)
    assert submitted(s) == {"pair": [0, 1]}
    assert s.cancel("pair") == [0, 1]
    assert submitted(s) == {"b": [0]}


def test_a_scoring_task_wants_logits_from_its_first_scored_row_and_at_most_max_outputs_a_step():
    s = Scheduler(n_slots=1, n_batch=16, n_ctx_slot=32, max_outputs=2)
    submitted(s, Task(id="score", tokens=tuple(range(6)), logits_from=2))
    assert [(r.pos, r.logits) for r in s.next_batch()] == [(0, False), (1, False), (2, True), (3, True)]
    assert [(r.pos, r.logits) for r in s.next_batch()] == [(4, True), (5, True)]
    assert s.slots[0].state is SlotState.SCORED and s.next_batch() == []


def test_an_illegal_event_raises_and_leaves_the_slot_unchanged():
    s = Scheduler(n_slots=1, n_batch=8, n_ctx_slot=32)
    with pytest.raises(SlotStateError, match="slot 0: sampled is not allowed in state idle"):
        s.sampled(0, 5)
    with pytest.raises(SlotStateError, match="release is not allowed in state idle"):
        s.release(0)
    assert s.slots[0].state is SlotState.IDLE and s.slots[0].last is None


def test_a_task_that_cannot_fit_a_slot_or_wants_more_slots_than_there_are_is_refused():
    s = Scheduler(n_slots=2, n_batch=8, n_ctx_slot=4)
    with pytest.raises(ValueError, match="a slot holds 1 to 4"):
        s.submit(generation("big", 5))
    with pytest.raises(ValueError, match="decodes 1 to 2 side by side"):
        s.submit(generation("many", 2, choices=3))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "cancel", "step"]), st.integers(0, 7), st.integers(1, 9),
                          st.integers(1, 3)), max_size=60))
def test_under_any_interleaving_busy_slots_never_exceed_n_slots_and_every_task_ends_once(events):
    s = Scheduler(n_slots=3, n_batch=6, n_ctx_slot=40)
    ended: list[str] = []
    names: list[str] = []

    def step(done_at: int) -> None:
        s.seat()
        for row in s.next_batch():
            slot = s.slots[row.slot]
            if row.logits and slot.state is SlotState.GENERATING:
                task = slot.task
                forked = row.pos == len(task.tokens) - 1  # the lead's last prompt row feeds every choice
                for choice in [c for c in s.slots if c.task is task and (c is slot or forked)]:
                    if choice.n_past >= done_at:
                        s.release(choice.index)
                    else:
                        s.sampled(choice.index, 1)
                if not any(c.task is task for c in s.slots):
                    ended.append(task.id)

    for kind, which, size, choices in events:
        if kind == "submit":
            names.append(f"t{len(names)}")
            s.submit(generation(names[-1], size, choices))
        elif kind == "cancel" and names:
            name = names[which % len(names)]
            was_waiting = name in {t.id for t in s.waiting}
            if s.cancel(name) or was_waiting:
                ended.append(name)
        else:
            step(4 + which)
        assert sum(slot.state is not SlotState.IDLE for slot in s.slots) <= 3
    for _ in range(200):  # drain
        step(12)
    assert not s.busy() and sorted(ended) == sorted(names) and len(ended) == len(set(ended))


def test_the_rate_meter_counts_tokens_over_the_last_seconds_only():
    from inferad.worker import RateMeter

    meter = RateMeter(window_s=10)
    assert meter.rate(0.0) == 0.0
    for t in range(11):
        meter.add(2, float(t))  # 2 tokens a second for 10 s
    assert meter.rate(10.0) == 2.0
    assert meter.rate(25.0) == 0.0  # nothing lately: no claim


def test_a_scoring_task_can_want_logits_at_chosen_rows_only():
    s = Scheduler(n_slots=1, n_batch=16, n_ctx_slot=32)
    submitted(s, Task(id="sample", tokens=tuple(range(8)), logits_from=2, logits_at=frozenset({3, 5, 7})))
    assert [r.pos for r in s.next_batch() if r.logits] == [3, 5, 7]
