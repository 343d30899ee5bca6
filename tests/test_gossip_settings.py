"""Gossip keeps IP-colocation (eclipse) protection on, except where a network runs on one machine."""

from pathlib import Path

from cli import start
from inferad.config import Config
from inferad.devnet import ONE_MACHINE_ARGS, Devnet
from p2p.mesh import GossipSettings, score_params


def test_the_defaults_protect_against_ip_colocation():
    settings = GossipSettings(ip_colocation_limit=Config().ip_colocation_limit)
    assert settings.ip_colocation_protection
    params = score_params(settings)
    assert params.p7_ip_colocation_weight > 0
    assert params.p7_ip_colocation_threshold == Config().ip_colocation_limit == 10


def test_a_limit_of_zero_turns_the_protection_off():
    settings = GossipSettings(ip_colocation_limit=0)
    assert not settings.ip_colocation_protection
    assert score_params(settings).p7_ip_colocation_weight == 0


def test_colocated_peers_beyond_the_limit_score_below_the_publish_threshold():
    from libp2p.peer.id import ID
    from libp2p.pubsub.score import PeerScorer

    settings = GossipSettings()
    scorer = PeerScorer(score_params(settings))
    peers = [ID(bytes([i]) * 32) for i in range(settings.ip_colocation_limit + 3)]
    for peer in peers:
        scorer.add_peer_ip(peer, "203.0.113.7")
    assert scorer.score(peers[0], []) < settings.publish_threshold


def test_devnet_nodes_turn_the_protection_off_and_keep_the_default_context(tmp_path):
    args = Devnet(tmp_path).node_args("node2", Path("chain.json"), bootstrap="/ip4/127.0.0.1/tcp/1/p2p/x")
    assert ONE_MACHINE_ARGS == ("--ip-colocation-limit", "0")
    params = start.make_context("start", args).params  # parsed as `inferad start` parses them
    assert params["ip_colocation_limit"] == 0
    assert params["n_ctx"] is None  # the node's default window: trained context, capped by memory
