"""Node configuration: a commented TOML file with a default for every key.

``inferad init`` writes :data:`TEMPLATE`, so an operator reads every setting,
its meaning and its default in their own home; a missing key means the
default, an unknown or mistyped one is an error that names the file and key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATE = """\
# inferad node configuration.  Every key is optional: the value shown is the
# default.  Command-line flags override what is set here.

[node]
# libp2p listen addresses (TCP; Noise encryption, Yamux multiplexing).
# Port 0 picks a free port; the chosen one is written to node.json.
listen = ["/ip4/0.0.0.0/tcp/4001"]
# Full addresses (/ip4/…/tcp/…/p2p/12D3KooW…) of nodes to join; none: this
# node starts a new network.
bootstrap = []
# Seconds between adverts (also sent on load changes, at most every 0.5 s).
# A peer silent for 3 periods is dropped from the peer table.
advert_interval = 2

[gossip]
# IP-colocation (eclipse) protection: when more than this many peers share one
# IP address, gossip scores them down and the mesh prefers peers on other IPs,
# so one machine cannot surround a node with identities.  0 turns it off: only
# for networks whose nodes all run on one machine (`inferad devnet up` and the
# tests, all on 127.0.0.1), where every peer has the same IP.
ip_colocation_limit = 10

[relay]
# Circuit relay v2, for nodes behind NAT (docs/operator.md, "Behind a home
# router").  A node that peers can dial (AutoNAT says public) relays for those
# that cannot, within these limits; false: never (`--no-relay-service`).  A
# relay carries encrypted bytes only: Noise runs end to end through it.
relay_service = true
# Nodes holding a reservation (a slot) at once.
relay_reservations = 32
# Relayed connections open at once to one reserved node.
relay_circuits = 16
# Seconds one relayed connection may last, and bytes it may carry both ways
# together (0: no limit); past either the relay closes it.
relay_circuit_duration = 3600
relay_circuit_bytes = 1073741824
# Hole punching (DCUtR): two nodes connected through a relay try to open a
# direct connection (TCP simultaneous open from their listen ports, which
# most home routers allow); false: stay relayed.
relay_hole_punching = true

[engine]
# Models to serve: catalog names (see `inferad models --catalog`), GGUF paths, or
# "sha256:<64 hex>" (also "label@sha256:<hex>"): a model fetched from the peers
# that serve it when the cache lacks it (`inferad models list` shows the cache).
models = ["gemma-3-270m"]
# LoRA adapters (GGUF paths or "sha256:<hex>" of cached ones), each served on the
# one model above as a (model, adapter) pair of its own: jobs name both.
adapters = []
# Bytes of fetched models the cache keeps, least recently used evicted first (0: no limit).
model_cache_limit = 0
# Context window of one slot in tokens: prompt + max_tokens of a job must fit
# in it.  0: the model's trained context capped by what a quarter of the
# memory left free after the weights (RAM, or VRAM when layers are offloaded)
# holds of its KV cache, shared by the slots on a CPU; the node logs the
# choice at start.  Above the trained context: refused.
n_ctx = 0
# Slots: jobs decoded side by side in one batch (continuous batching).  0: 4
# on a CPU; with a GPU, as many 4096-token slots as the memory budget holds
# (4 to 64).  The node refuses to start when slots x n_ctx do not fit.
parallel = 0
# CPU threads for llama.cpp; 0 means one per core.
n_threads = 0
# Layers offloaded to the GPU when llama-cpp-python was built with CUDA
# (-1 = all, 0 = CPU only).
n_gpu_layers = -1
# Largest max_tokens a job may ask for.
max_tokens = 1024
# Jobs waiting for a free slot; more are refused "busy".
queue_size = 8
# After the first token, send tokens in batches gathered over this many
# milliseconds: fewer writes through the network stack, for CPU it shares
# with llama.cpp.  0 sends every token on its own.
stream_batch_ms = 50
# Batch-invariant decoding: every logits row computed by the same CPU kernels
# whatever shares its batch, so a job's tokens do not depend on load and a
# verifier with the same build (the fingerprint in the result's engine) checks
# them exactly instead of within float noise.  Needs the llama.cpp build of
# `make llama-invariant` and n_gpu_layers = 0; prefill is slower
# (docs/verification.md, "Batch-invariant engines").
batch_invariant = false

[routing]
# Seconds to connect to a worker, to wait for its first token (queue wait
# included), and between two of its tokens; past them it is replaced.
connect_timeout = 5
first_token_timeout = 60
stall_timeout = 10
# Workers tried for one job before the gateway gives up.
max_attempts = 4
# Workers whose reputation (0..1, 0.5 when unknown) is below this get no jobs.
reputation_floor = 0.2

[verification]
# Only with a chain (the draw needs its blocks).  Verifiers asked per drawn job,
# and how many must find a result invalid before that is slashing evidence.
verifiers = 2
quorum = 2
# A worker's jobs are all verified at first; fewer as valid attestations
# accumulate, never fewer than this fraction.
probability_floor = 0.05
# Seconds a verifier may take to answer before the next one is asked.
verify_timeout = 120
# Seconds after a job's beacon block for its attestations to arrive; a drawn
# job still unverified then is not paid.
attestation_window = 300
# A node the draw names to verify a job on a model it does not serve fetches the
# model from the peers that serve it, up to this many bytes (0: never).
fetch_models = 8000000000
# Oracle: share of a convicted worker's stake slashed, and of that the share
# paid to the verifiers who proved it, in basis points.
slash_bps = 5000
bounty_bps = 1000

[api]
# The OpenAI-compatible HTTP API: off unless a port is set (here or --api-port).
# It needs a key (`inferad apikey create`); keep it on 127.0.0.1 unless a
# proxy with TLS is in front.  Jobs made through it are signed with this
# home's client key and pay at most api_max_price wei per token.
api_host = "127.0.0.1"
api_port = -1          # -1: off; 0: any free port (written to node.json)
api_max_price = 0

[limits]
# Largest stream frame accepted, in bytes; longer frames reset the stream.
max_frame = 1048576
# Longest lifetime a job may declare (expires_at - created_at), in seconds.
max_job_ttl = 600
# Tolerated clock difference with clients, in seconds.
clock_skew = 60
# Seconds a peer has to send its whole request before the stream is reset.
request_timeout = 10
"""


class ConfigError(Exception):
    """The configuration file is unreadable or holds a bad value; the message says which."""


@dataclass(frozen=True)
class Config:
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    advert_interval: int = 2
    ip_colocation_limit: int = 10
    relay_service: bool = True
    relay_reservations: int = 32
    relay_circuits: int = 16
    relay_circuit_duration: int = 3600  # seconds
    relay_circuit_bytes: int = 1 << 30
    relay_hole_punching: bool = True
    models: tuple[str, ...] = ("gemma-3-270m",)
    model_cache_limit: int = 0  # bytes of models fetched from peers kept in the cache; 0: no limit
    adapters: tuple[str, ...] = ()  # LoRA adapters, each served on the one model as a pair of its own
    n_ctx: int = 0  # 0: chosen at start (inferad.context.plan)
    parallel: int = 0  # slots; 0: chosen at start (inferad.context.choose_slots)
    n_threads: int = 0
    n_gpu_layers: int = -1
    max_tokens: int = 1024
    queue_size: int = 8
    stream_batch_ms: int = 50
    batch_invariant: bool = False
    connect_timeout: int = 5
    first_token_timeout: int = 60
    stall_timeout: int = 10
    max_attempts: int = 4
    reputation_floor: float = 0.2
    verifiers: int = 2
    quorum: int = 2
    probability_floor: float = 0.05
    verify_timeout: int = 120
    attestation_window: int = 300
    fetch_models: int = 8_000_000_000  # bytes: the largest model a verifier fetches to verify a job; 0: never
    slash_bps: int = 5000
    bounty_bps: int = 1000
    api_host: str = "127.0.0.1"
    api_port: int = -1
    api_max_price: int = 0
    max_frame: int = 1 << 20
    max_job_ttl: int = 600
    clock_skew: int = 60
    request_timeout: int = 10

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given settings replaced; ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


SECTIONS = {
    "node": ("listen", "bootstrap", "advert_interval"),
    "gossip": ("ip_colocation_limit",),
    "relay": ("relay_service", "relay_reservations", "relay_circuits", "relay_circuit_duration", "relay_circuit_bytes",
              "relay_hole_punching"),
    "engine": ("models", "adapters", "model_cache_limit", "n_ctx", "parallel", "n_threads", "n_gpu_layers",
               "max_tokens", "queue_size", "stream_batch_ms", "batch_invariant"),
    "routing": ("connect_timeout", "first_token_timeout", "stall_timeout", "max_attempts", "reputation_floor"),
    "verification": ("verifiers", "quorum", "probability_floor", "verify_timeout", "attestation_window",
                     "fetch_models", "slash_bps", "bounty_bps"),
    "api": ("api_host", "api_port", "api_max_price"),
    "limits": ("max_frame", "max_job_ttl", "clock_skew", "request_timeout"),
}


def load_config(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    defaults = Config()
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, value in table.items():
            if key not in SECTIONS[section]:
                raise ConfigError(f"{path}: unknown key {section}.{key}")
            values[key] = _coerce(path, f"{section}.{key}", getattr(defaults, key), value)
    return dataclasses.replace(defaults, **values)


def _coerce(path: Path, name: str, default: Any, value: Any) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {name} must be a list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {name} must be true or false")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {name} must be a string")
        return value
    if isinstance(default, float):
        if type(value) not in (int, float) or not 0 <= value <= 1:
            raise ConfigError(f"{path}: {name} must be a number from 0 to 1, got {value!r}")
        return float(value)
    if type(value) is not int or (value < 0 and name not in ("engine.n_gpu_layers", "api.api_port")):
        raise ConfigError(f"{path}: {name} must be a non-negative integer, got {value!r}")
    return value
