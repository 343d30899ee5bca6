"""Valid messages to start tests from; each test changes what it is about."""

import time

from p2p import wire

GEMMA = wire.ModelRef(sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                      name="gemma-3-270m")
CLIENT_ETH = "0x" + "ab" * 20
WORKER = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"


def make_job(prompt="Hello", *, max_tokens=8, ttl_s=60, age_s=0, model=GEMMA, **params) -> wire.JobRequest:
    now = int(time.time() * 1000) - age_s * 1000
    return wire.JobRequest(
        model=model,
        params=wire.SamplingParams(max_tokens=max_tokens, **params),
        max_price=0,
        client_eth=CLIENT_ETH,
        nonce=time.time_ns() % 2**64,
        created_at=now,
        expires_at=now + ttl_s * 1000,
        prompt=prompt,
    )


def make_result(job_id="00" * 32, tokens=(1, 2, 3), signed_at=None) -> wire.JobResult:
    return wire.JobResult(
        job_id=job_id,
        model=GEMMA,
        output_tokens=tuple(tokens),
        text="abc",
        finish_reason="length",
        usage=wire.Usage(prompt_tokens=2, completion_tokens=len(tokens)),
        timings=wire.Timings(queue_ms=0, prompt_ms=1, decode_ms=2),
        engine=wire.EngineInfo(name="llama.cpp", version="test", backend="cpu"),
        worker=WORKER,
        signed_at=int(time.time() * 1000) if signed_at is None else signed_at,
    )
