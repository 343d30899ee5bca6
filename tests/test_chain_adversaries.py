"""Requests from peers a node must not trust, on a network with a chain: each refused with its code.

One chain for the module (``inferad devnet chain``) and two nodes: a staked verifier
that serves the model, and a staked gateway without a model (so the verifier knows
it as staked from its adverts).  The oracle's home is staked but runs no node: only
its key matters here.  The requests are raw signed frames (tests/test_bad_input.py
``exchange``), each signed by the key whose trust is being tested.
"""

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import trio
from nacl.signing import SigningKey

from chain.beacon import BeaconFinder
from chain.devnet import ANVIL, ChainInfo
from inferad.home import Home
from inferad.verification import expiry_s
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT
from p2p.mesh import PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY
from tests.conftest import INFERAD, ROOT, NodeProcess, run_cli
from tests.factories import make_job, make_result
from tests.test_bad_input import exchange, served_model
from tests.test_mesh_integration import peer_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]

CLIENT = SigningKey(b"k" * 32)
CLIENT_ETH = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"  # EIP-55 form of tests.factories.CLIENT_ETH


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("chainadv")
    homes = {name: root / name for name in ("oracle", "verifier", "gateway")}
    for home in homes.values():
        run_cli("init", home=home, check=True)
    funds = sum((["--fund", str(h)] for h in homes.values()), [])
    devnet = subprocess.Popen([*INFERAD, "devnet", "chain", "--dir", str(root / "dev"),
                               "--oracle", str(homes["oracle"]), *funds],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chain_json = root / "dev" / "chain.json"
    nodes = {}
    try:
        wait_for(chain_json.exists, 60, "the devnet")
        chain = ("--chain", str(chain_json))
        for home in homes.values():
            run_cli("chain", "stake", "2", *chain, home=home, check=True)
        staked_at = time.time()
        nodes["verifier"] = NodeProcess(homes["verifier"], "--max-tokens", "16", "--n-ctx", "512", *chain)
        nodes["gateway"] = NodeProcess(homes["gateway"], "--no-model", "--bootstrap", nodes["verifier"].addr, *chain)
        everyone = {n.info["peer_id"] for n in nodes.values()}
        wait_for(lambda: peer_ids(nodes["verifier"]) == everyone, 45, "the verifier to see the gateway's advert")
        yield {"homes": homes, "nodes": nodes, "chain": ChainInfo.load(chain_json), "staked_at": staked_at}
    finally:
        for node in nodes.values():
            node.stop()
        devnet.send_signal(signal.SIGTERM)
        devnet.wait(30)


def key_of(net, name: str) -> SigningKey:
    return Home(net["homes"][name]).node_key


def answer(net, request: bytes, protocol: str) -> wire.Envelope:
    """The verifier's one answer to ``request`` (a signed message), sent on a fresh connection."""
    (frame,) = trio.run(exchange, net["nodes"]["verifier"].addr, wire.encode_frame(request), protocol)
    return frame


def code_of(frame: wire.Envelope) -> str:
    return frame.message.code if frame.type == "error" else frame.type


def ask_to_verify(net, asker: SigningKey, job: bytes, result: bytes, beacon_block: int, beacon: bytes) -> str:
    """A verify request signed by ``asker``: the error code, or the answer's type.  A staked asker
    is retried while the verifier has not read its stake yet (its chain view refreshes every 3 s)."""
    request = wire.sign(wire.VerifyRequest(job=job, result=result, beacon_block=beacon_block, beacon=beacon), asker)
    if bytes(asker.verify_key) not in {bytes(key_of(net, n).verify_key) for n in ("gateway", "verifier")}:
        return code_of(answer(net, request, PROTOCOL_VERIFY))
    return wait_for(lambda: (code := code_of(answer(net, request, PROTOCOL_VERIFY))) != "unstaked" and code, 20,
                    "the verifier to read the gateway's stake")


def expired_job_and_forged_result(net) -> tuple[bytes, bytes, wire.JobRequest]:
    """A job that expired 10 s ago and a result for it signed by some worker, on the verifier's model."""
    job = make_job(model=served_model(net["nodes"]["verifier"]), ttl_s=5, age_s=15)
    signed_job = wire.sign(job, CLIENT)
    result = wire.sign(make_result(wire.decode(signed_job).digest), SigningKey.generate())
    return signed_job, result, job


def verified_here(net) -> int:
    status = run_cli("status", "--json", home=net["homes"]["verifier"], check=True).stdout
    return json.loads(status)["verification"]["verified_here"]


def test_a_verifier_refuses_an_unstaked_asker(net):
    job, result, _ = expired_job_and_forged_result(net)
    assert ask_to_verify(net, SigningKey.generate(), job, result, 1, b"\1" * 32) == "unstaked"


@pytest.mark.parametrize("forgery", ["made_up_hash", "a_later_block"])
def test_a_verifier_refuses_a_forged_beacon(net, forgery):
    job, result, request = expired_job_and_forged_result(net)
    finder = BeaconFinder(net["chain"].web3())
    latest = finder.block(finder.w3.eth.block_number)
    assert latest.number > finder.first_at_or_after(expiry_s(request)).number  # the true beacon is older
    beacon = b"\x42" * 32 if forgery == "made_up_hash" else latest.hash
    assert ask_to_verify(net, key_of(net, "gateway"), job, result, latest.number, beacon) == "bad_beacon"


def test_a_verifier_answers_a_staked_gateway_with_the_true_beacon(net):
    """The control for the refusals above: the same request with the job's real beacon is judged.
    The draw names 5 of the staked keys for each result, so results are forged until one names
    this verifier (a `not_named` answer judges nothing; CI once drew a result that did not).
    The jobs expired 10 s ago: their beacon must come after the verifier's stake, or the draw
    rightly names only those staked then (a full `make test` once reached here within 10 s)."""
    time.sleep(max(0.0, net["staked_at"] + 12 - time.time()))
    before = verified_here(net)
    for _ in range(20):
        job, result, request = expired_job_and_forged_result(net)
        true = BeaconFinder(net["chain"].web3()).first_at_or_after(expiry_s(request))
        answer = ask_to_verify(net, key_of(net, "gateway"), job, result, true.number, true.hash)
        if answer != "not_named":
            break
    assert answer == "attestation"
    assert verified_here(net) == before + 1


def run_on_verifier(net) -> tuple[bytes, bytes]:
    """A job the verifier ran itself (as gateway and worker): the signed job and its signed result."""
    job = dataclasses.replace(make_job("Hi", model=served_model(net["nodes"]["verifier"]), max_tokens=2),
                              client_eth=CLIENT_ETH)
    signed_job = wire.sign(job, CLIENT)
    frames = trio.run(exchange, net["nodes"]["verifier"].addr, wire.encode_frame(signed_job), PROTOCOL_SUBMIT)
    assert frames[-1].type == "result", frames[-1]
    # Ed25519 signatures are deterministic: re-signing the decoded result gives the bytes the verifier sent.
    return signed_job, wire.sign(frames[-1].message, key_of(net, "verifier"))


@pytest.mark.parametrize("party", ["the_worker", "the_client", "the_asker"])
def test_a_verifier_refuses_to_judge_a_job_it_is_a_party_to(net, party):
    if party == "the_worker":
        job, result = run_on_verifier(net)
    else:
        client = key_of(net, "verifier") if party == "the_client" else CLIENT
        signed_job = wire.sign(make_job(model=served_model(net["nodes"]["verifier"])), client)
        job, result = signed_job, wire.sign(make_result(wire.decode(signed_job).digest), SigningKey.generate())
    asker = key_of(net, "verifier" if party == "the_asker" else "gateway")
    before = verified_here(net)
    assert ask_to_verify(net, asker, job, result, 1, b"\1" * 32) == "party"
    assert verified_here(net) == before


def report_request() -> wire.ReportRequest:
    epoch = int(time.time()) // 30
    return wire.ReportRequest(after=epoch - 10, upto=epoch)


@pytest.mark.parametrize("asker", ["a_staked_node", "a_stranger"])
def test_a_settlement_report_is_forbidden_to_anyone_but_the_oracle(net, asker):
    key = key_of(net, "gateway") if asker == "a_staked_node" else SigningKey.generate()
    assert code_of(answer(net, wire.sign(report_request(), key), PROTOCOL_SETTLEMENT)) == "forbidden"


def test_the_oracle_gets_its_settlement_report(net):
    """The control for the refusal above: the key the oracle registered on chain is answered."""
    frame = wait_for(lambda: (f := answer(net, wire.sign(report_request(), key_of(net, "oracle")),
                                          PROTOCOL_SETTLEMENT)).type != "error" and f, 20,
                     "the verifier to read the oracle's key from the chain")
    assert frame.type == "report" and frame.signer_peer_id == net["nodes"]["verifier"].info["peer_id"]


def test_a_job_whose_client_address_is_not_in_checksum_form_is_refused(net):
    """Deposits are read and charges reserved per address: one spelled in another case must not
    crash the gateway's chain lookup (web3 takes EIP-55 addresses only) nor count as another client."""
    job = make_job("Hi", model=served_model(net["nodes"]["verifier"]), max_tokens=2)
    assert job.client_eth == job.client_eth.lower()
    frames = trio.run(exchange, net["nodes"]["verifier"].addr, wire.encode_frame(wire.sign(job, CLIENT)),
                      PROTOCOL_SUBMIT)
    assert [code_of(f) for f in frames] == ["schema"]


def test_an_advert_with_an_address_not_in_checksum_form_is_rejected_and_the_node_runs_on(net):
    """A node with a chain reads the stake of every advertised address (web3 takes EIP-55 only):
    one gossiped advert spelling its address in lower case must not stop that."""
    verifier = net["nodes"]["verifier"]

    def rejected() -> int:
        return json.loads(run_cli("status", "--json", home=verifier.home, check=True).stdout)["adverts_rejected"]

    before = rejected()
    fake = subprocess.Popen([sys.executable, "-m", "tests.adversaries.fake_peer", verifier.addr, "unchecksummed_eth",
                             "30"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        fake_id = fake.stdout.readline().split()[1]
        wait_for(lambda: rejected() > before, 20, "the verifier to reject the advert")
        time.sleep(4)  # past the next chain refresh (every 3 s)
        assert verifier.proc.poll() is None and fake_id not in peer_ids(verifier)
        assert code_of(answer(net, wire.sign(report_request(), SigningKey.generate()), PROTOCOL_SETTLEMENT)) == \
            "forbidden"  # and it still answers
    finally:
        fake.kill()
        fake.wait(30)
