"""Verdicts on re-scored results (proofs.check), evidence counting and checking: numbers only, no model."""

import pytest
from nacl.signing import SigningKey

from chain.settlement import SettlementError, verify_evidence, verify_false_accusation
from p2p import wire
from proofs.check import INVALID, VALID, Claim, Drawn, Position, Thresholds, check_claim, judge
from proofs.reputation import Vote, evidence_by_worker, false_accusers, job_outcome
from tests.factories import make_job, make_result


def greedy(gap=0.0, rank=0):
    return Position(token=1, logprob=-1.0 - gap, top_logprob=-1.0, rank=rank)


def sampled(u=0.5, lo=0.4, hi=0.6, kept=True):
    return Position(token=1, logprob=-2.0, top_logprob=-0.5, rank=1, drawn=Drawn(u=u, lo=lo, hi=hi, kept=kept))


def test_greedy_tokens_that_are_the_top_choice_are_valid():
    assert judge([greedy()] * 20, temperature=0.0).verdict == VALID


def test_greedy_near_ties_within_the_margin_are_float_noise_not_lies():
    assert judge([greedy(), greedy(gap=0.3, rank=1)], temperature=0.0).verdict == VALID


def test_one_greedy_token_beyond_the_margin_is_invalid_and_named():
    verdict = judge([greedy()] * 5 + [greedy(gap=3.0, rank=7)], temperature=0.0)
    assert verdict.verdict == INVALID and verdict.metrics["position"] == 5


def test_a_sampled_token_whose_interval_holds_the_public_draw_is_valid():
    assert judge([sampled()] * 8, temperature=0.8).verdict == VALID


def test_a_sampled_token_whose_interval_misses_the_public_draw_is_invalid_and_named():
    verdict = judge([sampled()] * 3 + [sampled(u=0.999)], temperature=0.8)
    assert verdict.verdict == INVALID and verdict.metrics["position"] == 3 and "public draw" in verdict.reason


def test_a_draw_that_float_noise_in_the_logits_explains_is_ambiguous_not_a_lie():
    lo, hi = Drawn(u=0.5, lo=0.4, hi=0.6).reach(Thresholds().draw_margin)  # at temperature 1
    assert 0.2 < lo < 0.4 and 0.6 < hi < 0.8
    verdict = judge([sampled(u=(0.6 + hi) / 2), sampled(u=(lo + 0.4) / 2), sampled()], temperature=1.0)
    assert verdict.verdict == VALID and verdict.metrics["ambiguous"] == 2
    assert judge([sampled(u=hi + 0.02)] * 2, temperature=1.0).verdict == INVALID


def test_between_batch_invariant_engines_of_one_build_a_draw_a_hair_outside_is_a_lie():
    hair = [sampled(u=0.6 + 1e-4)]  # ambiguous where float noise must be allowed for
    assert judge(hair, temperature=1.0).verdict == "valid"
    assert judge(hair, temperature=1.0, thresholds=Thresholds.exact()).verdict == "invalid"
    assert judge([greedy(gap=1e-3)], temperature=0.0, thresholds=Thresholds.exact()).verdict == "invalid"
    assert judge([sampled(u=0.6 - 1e-9)], temperature=1.0, thresholds=Thresholds.exact()).verdict == "valid"


def test_one_draw_in_the_rare_tail_of_float_noise_is_tolerated_per_choice():
    """The field's case (2026-12-02): an honest job at temperature 1.5, top-p 0.95, generated 16 at a
    time, whose token 4 the verifier's logits put at [0.1048, 0.3748) while the worker's put it at
    [0.0329, 0.2905), around the draw 0.0397: a coordinated shift of 0.93 nats, past draw_margin."""
    field = sampled(u=0.0397, lo=0.1048, hi=0.3748)
    verdict = judge([sampled()] * 4 + [field] + [sampled()] * 3, temperature=1.5)
    assert verdict.verdict == VALID and verdict.metrics["excursions"] == 1


def test_a_second_draw_in_the_tail_of_float_noise_is_a_lie():
    field = sampled(u=0.0397, lo=0.1048, hi=0.3748)
    verdict = judge([sampled(), field, sampled(), field], temperature=1.5)
    assert verdict.verdict == INVALID and verdict.metrics["position"] == 1
    assert "1 allowed" in verdict.reason and verdict.metrics["excursions"] == 2


def test_a_long_output_is_allowed_one_draw_in_the_tail_of_float_noise_per_256_positions():
    field = sampled(u=0.0397, lo=0.1048, hi=0.3748)
    assert [Thresholds().excursions_tolerated(n) for n in (1, 32, 256, 257, 1024)] == [1, 1, 1, 2, 4]
    assert judge([field] + [sampled()] * 299 + [field], temperature=1.5).verdict == VALID
    assert judge([field] + [sampled()] * 200 + [field], temperature=1.5).verdict == INVALID


def test_a_draw_beyond_the_tail_of_float_noise_is_a_lie_at_once():
    verdict = judge([sampled(u=0.0001, lo=0.1048, hi=0.3748)], temperature=1.5)
    assert verdict.verdict == INVALID and verdict.metrics["excursions"] == 0


def test_a_sampled_token_of_next_to_no_probability_is_invalid_even_beside_the_draw():
    """A doctored token whose interval, in id order, happens to lie within noise of the draw (the
    field's case: 28 nats below the best at temperature 0.9)."""
    doctored = Position(token=1, logprob=-28.0, top_logprob=-1.0, rank=9000, drawn=Drawn(u=0.3, lo=0.3001, hi=0.3001))
    verdict = judge([sampled(), doctored], temperature=0.9)
    assert verdict.verdict == INVALID and verdict.metrics["position"] == 1 and "trails the best" in verdict.reason
    rare = Position(token=1, logprob=-15.0, top_logprob=-1.0, rank=900, drawn=Drawn(u=0.3, lo=0.2999, hi=0.3001))
    assert judge([rare], temperature=1.5).verdict == VALID  # unlikely, not impossible: once in 10**9 draws


def test_the_noise_a_draw_is_allowed_grows_as_the_temperature_falls():
    near_miss = sampled(u=0.85)
    assert judge([near_miss] * 2, temperature=1.0).verdict == INVALID
    assert judge([near_miss] * 2, temperature=0.3).verdict == VALID


def test_a_token_the_jobs_top_k_or_top_p_excludes_is_invalid_wherever_the_draw_fell():
    verdict = judge([sampled(kept=False)], temperature=1.0)
    assert verdict.verdict == INVALID and "could not emit" in verdict.reason


def honest_claim(**changes):
    claim = dict(model_sha256="aa" * 32, expected_model_sha256="aa" * 32, prompt_tokens=5, expected_prompt_tokens=5,
                 completion_tokens=8, output_tokens=8, text="hi", replayed_text="hi", finish_reason="length",
                 replayed_finish_reason="length", tokens_after_end=0, max_tokens=8)
    return Claim(**{**claim, **changes})


@pytest.mark.parametrize("lie, words", [
    (dict(model_sha256="bb" * 32), "model"),
    (dict(prompt_tokens=4), "prompt tokens"),
    (dict(completion_tokens=7), "completion tokens"),
    (dict(replayed_finish_reason=None), "truncated"),
    (dict(tokens_after_end=2), "after the generation had ended"),
    (dict(finish_reason="stop"), "finish_reason"),
    (dict(text="hello"), "text"),
])
def test_structural_lies_are_invalid_with_a_reason(lie, words):
    verdict = check_claim(honest_claim(**lie))
    assert verdict is not None and verdict.verdict == INVALID and words in verdict.reason


def test_an_honest_claim_has_no_structural_fault():
    assert check_claim(honest_claim()) is None


def vote(verifier, verdict, worker="w", job="j", beacon_block=1):
    return Vote(job_id=job, result_hash="r", worker=worker, verifier=verifier, verdict=verdict,
                beacon_block=beacon_block)


def test_one_verifier_cannot_condemn_a_worker():
    assert job_outcome([vote("a", "invalid")]) == "disputed"
    assert job_outcome([vote("a", "invalid"), vote("a", "invalid")]) != "invalid"
    assert job_outcome([vote("a", "invalid"), vote("b", "invalid")]) == "invalid"


def test_a_worker_cannot_vouch_for_itself():
    assert job_outcome([vote("w", "valid")]) == "pending"


def test_the_oracles_valid_rescore_acquits_whatever_a_quorum_said():
    accused = [vote("a", "invalid"), vote("b", "invalid")]
    assert job_outcome(accused) == "invalid"
    assert job_outcome([*accused, vote("oracle", "valid")], arbiter="oracle") == "valid"
    assert false_accusers([*accused, vote("oracle", "valid")], arbiter="oracle") == ["a", "b"]


def test_the_oracle_cannot_convict_alone():
    assert job_outcome([vote("oracle", "invalid"), vote("a", "valid")], arbiter="oracle") == "disputed"
    assert job_outcome([vote("oracle", "invalid"), vote("a", "invalid")], arbiter="oracle") == "invalid"


def test_holders_of_the_job_count_only_attestations_at_its_beacon():
    votes = [vote("a", "invalid", beacon_block=7), vote("b", "invalid", beacon_block=8)]
    assert job_outcome(votes) == "invalid"
    assert job_outcome(votes, beacon_block=7) == "disputed"


def test_a_false_accusation_costs_the_accuser_like_a_lie():
    votes = [vote("a", "invalid"), vote("b", "invalid"), vote("oracle", "valid"), vote("c", "valid")]
    found = evidence_by_worker(votes, arbiter="oracle")
    assert found["w"].valid == 1 and found["a"].invalid == 1 and found["b"].invalid == 1
    assert "c" not in found or found["c"].invalid == 0


def test_evidence_counts_jobs_not_votes():
    votes = [vote("a", "valid", job="1"), vote("b", "valid", job="1"), vote("a", "invalid", job="2"),
             vote("b", "invalid", job="2")]
    assert evidence_by_worker(votes)["w"].valid == 1 and evidence_by_worker(votes)["w"].invalid == 1


def anyone(job, result, attestation):
    return True


def evidence(verdicts, *, signers=None):
    client, worker = SigningKey.generate(), SigningKey.generate()
    job = wire.sign(make_job(), client)
    job_id = wire.decode(job).digest
    result_msg = make_result(job_id)
    result_msg = wire.JobResult(**{**result_msg.__dict__, "worker": wire.peer_id_from_public_key(
        bytes(worker.verify_key))})
    result = wire.sign(result_msg, worker)
    signers = signers or [SigningKey.generate() for _ in verdicts]
    attestations = tuple(wire.sign(wire.Attestation(
        job_id=job_id, result_hash=wire.decode(result).digest, worker=result_msg.worker, model="aa" * 32,
        verdict=v, reason="test", metrics=wire.VerifyMetrics(), beacon_block=1, beacon=b"\1" * 32, ts=1), key)
        for v, key in zip(verdicts, signers, strict=True))
    return wire.encode_unsigned(wire.Evidence(job=job, result=result, attestations=attestations))


def test_evidence_with_a_quorum_of_invalid_attestations_holds():
    lie = verify_evidence(evidence(["invalid", "invalid"]), quorum=2, eligible=anyone)
    assert len(lie.verifier_keys) == 2


def test_invalid_attestations_by_verifiers_the_draw_does_not_name_prove_nothing():
    named = SigningKey.generate()
    data = evidence(["invalid", "invalid"], signers=[named, SigningKey.generate()])
    with pytest.raises(SettlementError, match="named"):
        verify_evidence(data, quorum=2, eligible=lambda job, result, att: att.signer == bytes(named.verify_key))


def test_a_false_accusation_needs_the_oracle_and_another_named_verifier():
    oracle, witness, a, b = (SigningKey.generate() for _ in range(4))
    data = evidence(["invalid", "invalid", "valid", "valid"], signers=[a, b, oracle, witness])
    false = verify_false_accusation(data, arbiter_key=bytes(oracle.verify_key), eligible=anyone)
    assert set(false.accuser_keys) == {bytes(a.verify_key), bytes(b.verify_key)}
    alone = evidence(["invalid", "invalid", "valid"], signers=[a, b, oracle])
    with pytest.raises(SettlementError, match="besides the oracle"):
        verify_false_accusation(alone, arbiter_key=bytes(oracle.verify_key), eligible=anyone)
    without_oracle = evidence(["invalid", "invalid", "valid"], signers=[a, b, witness])
    with pytest.raises(SettlementError, match="oracle"):
        verify_false_accusation(without_oracle, arbiter_key=bytes(oracle.verify_key), eligible=anyone)


@pytest.mark.parametrize("verdicts", [["invalid"], ["invalid", "valid"], ["invalid", "inconclusive"]])
def test_evidence_short_of_a_quorum_does_not_hold(verdicts):
    with pytest.raises(SettlementError):
        verify_evidence(evidence(verdicts), quorum=2, eligible=anyone)


def test_one_verifier_signing_twice_is_not_a_quorum():
    key = SigningKey.generate()
    with pytest.raises(SettlementError):
        verify_evidence(evidence(["invalid", "invalid"], signers=[key, key]), quorum=2, eligible=anyone)


def test_a_verdict_on_a_sample_of_positions_names_the_output_position():
    import dataclasses

    sample = [dataclasses.replace(greedy(), index=i) for i in (3, 17)] + \
        [dataclasses.replace(greedy(gap=2.0), index=40)]
    verdict = judge(sample, temperature=0.0)
    assert verdict.verdict == INVALID and verdict.metrics["position"] == 40 and "token 40" in verdict.reason
