"""Model names are bound to their bytes, with real node processes and the HTTP API.

An impostor (tests/adversaries/impostor.py: the real daemon with the binding rule
switched off) offers a file with other bytes as ``gemma-3-270m``.  The gateway G runs
the API and serves ``tiny.gguf``; later N joins with the genuine gemma-3-270m and a
different ``tiny.gguf``, so two honest files share the label ``tiny``.

The tests run in file order: the first one needs the network before N joins.
"""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from inferad.models import CATALOG
from tests.conftest import NodeProcess, run_cli
from tests.test_mesh_integration import status, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL_ARGS = ("--n-ctx", "512", "--max-tokens", "16")
GEMMA = CATALOG["gemma-3-270m"].sha256
IMPOSTOR = (sys.executable, "-m", "tests.adversaries.impostor", "gemma-3-270m")


def altered_copy(src: Path, dst: Path, mark: bytes) -> Path:
    """A copy of GGUF ``src`` whose ``general.name`` value starts with the byte ``mark``:
    the same model, other bytes (another sha256)."""
    dst.parent.mkdir(parents=True)
    shutil.copyfile(src, dst)
    key = b"general.name"
    # In a GGUF header: key length (u64), key, value type (u32, 8 = string), value length (u64), value.
    entry = len(key).to_bytes(8, "little") + key + (8).to_bytes(4, "little")
    with dst.open("r+b") as f:
        head = f.read(1 << 20)
        at = head.index(entry) + len(entry) + 8
        assert head[at:at + 1] != mark
        f.seek(at)
        f.write(mark)
    return dst


def served_sha(node: NodeProcess) -> dict[str, str]:
    """{label: sha256} of what a node serves, from its node.json."""
    return {m["name"]: m["sha256"] for m in node.info["models"]}


def ask(net, model: str) -> httpx.Response:
    return httpx.post(f"{net.api}/v1/completions", headers={"Authorization": f"Bearer {net.key}"}, timeout=120,
                      json={"model": model, "prompt": "The capital of France is", "max_tokens": 2,
                            "temperature": 0})


def listed(net) -> list[dict]:
    reply = httpx.get(f"{net.api}/v1/models", headers={"Authorization": f"Bearer {net.key}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def impostor_ran_nothing(net) -> bool:
    return json.loads(run_cli("jobs", "--json", home=net.impostor.home, check=True).stdout) == []


@pytest.fixture(scope="module")
def net(tmp_path_factory, gemma_path):
    """G (API, serving tiny.gguf) and the impostor, bootstrapped to G, whose adverts G has rejected."""
    root = tmp_path_factory.mktemp("names")
    nodes: list[NodeProcess] = []
    try:
        gateway = NodeProcess(root / "gateway", "--api-port", "0", "--model",
                              str(altered_copy(gemma_path, root / "g" / "tiny.gguf", b"g")), "--model-label", "tiny",
                              *MODEL_ARGS)
        nodes.append(gateway)
        key = run_cli("apikey", "create", home=gateway.home, check=True).stdout.strip()
        impostor = NodeProcess(root / "impostor", "--bootstrap", gateway.addr, "--model",
                               str(altered_copy(gemma_path, root / "i" / "gemma-3-270m.gguf", b"i")), *MODEL_ARGS,
                               command=IMPOSTOR)
        nodes.append(impostor)
        assert served_sha(impostor).keys() == {"gemma-3-270m"} and served_sha(impostor)["gemma-3-270m"] != GEMMA
        wait_for(lambda: status(gateway)["adverts_rejected"] >= 2, 45, "G to reject the impostor's adverts")
        net = SimpleNamespace(root=root, gateway=gateway, impostor=impostor, key=key, api=gateway.info["api"],
                              nodes=nodes, gemma_path=gemma_path)
        yield net
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def genuine(net):
    """N joins: the genuine gemma-3-270m and another tiny.gguf."""
    node = NodeProcess(net.root / "genuine", "--bootstrap", net.gateway.addr, "--model", "gemma-3-270m", "--model",
                       "tiny=" + str(altered_copy(net.gemma_path, net.root / "n" / "tiny.gguf", b"n")), *MODEL_ARGS)
    net.nodes.append(node)
    wait_for(lambda: len(listed(net)) == 3, 45, "G to list N's models")
    return node


def test_an_impostor_alone_is_rejected_unlisted_and_never_asked(net):
    fake = served_sha(net.impostor)["gemma-3-270m"]
    assert net.impostor.info["peer_id"] not in {p["peer_id"] for p in
                                                json.loads(run_cli("peers", "--json", home=net.gateway.home).stdout)}
    models = listed(net)
    assert [m["id"] for m in models] == ["tiny"], models  # G's own file only: the impostor's advert is void
    assert all(m["inferad"]["sha256"] != fake for m in models)
    reply = ask(net, "gemma-3-270m")
    assert reply.status_code in (404, 503), reply.text
    assert reply.json()["error"]["code"] in ("unknown_model", "no_worker") and reply.json()["error"]["message"]
    assert ask(net, fake).status_code in (404, 503)  # asking for its bytes by sha256 does not reach it either
    assert impostor_ran_nothing(net)


def test_with_the_genuine_model_served_gemma_goes_to_it_and_never_to_the_impostor(net, genuine):
    fake = served_sha(net.impostor)["gemma-3-270m"]
    rejected = status(net.gateway)["adverts_rejected"]
    (gemma,) = [m for m in listed(net) if m["id"] == "gemma-3-270m"]
    assert gemma["inferad"] == {"sha256": GEMMA, "label": "gemma-3-270m", "providers": 1}
    assert all(m["inferad"]["sha256"] != fake for m in listed(net))
    for _ in range(3):
        reply = ask(net, "gemma-3-270m")
        assert reply.status_code == 200, reply.text
        assert reply.json()["inferad"]["worker"] == genuine.info["peer_id"]
        assert reply.json()["model"] == "gemma-3-270m"
    wait_for(lambda: status(net.gateway)["adverts_rejected"] > rejected, 20, "the impostor's adverts to stay void")
    assert impostor_ran_nothing(net)


def test_two_files_sharing_a_label_answer_400_with_every_choice_and_each_can_be_named(net, genuine):
    at_g, at_n = served_sha(net.gateway)["tiny"], served_sha(genuine)["tiny"]
    assert at_g != at_n
    assert {m["id"] for m in listed(net)} == {"gemma-3-270m", f"tiny@{at_g}", f"tiny@{at_n}"}
    reply = ask(net, "tiny")
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "ambiguous_model" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert f"tiny@{at_g}" in error["message"] and f"tiny@{at_n}" in error["message"]
    by_label = ask(net, f"tiny@{at_n}")
    assert by_label.status_code == 200, by_label.text
    assert by_label.json()["inferad"]["worker"] == genuine.info["peer_id"]
    by_sha = ask(net, at_g)
    assert by_sha.status_code == 200, by_sha.text
    assert by_sha.json()["inferad"]["worker"] == net.gateway.info["peer_id"]
    models = json.loads(run_cli("models", "--json", home=net.gateway.home, check=True).stdout)
    assert sorted(m["id"] for m in models) == sorted(m["id"] for m in listed(net))
