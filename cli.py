"""inferad: run a node of the inferad inference network, or use one.

Imports are lazy: ``inferad --help`` must not pay for llama.cpp or libp2p.
Exit codes: 0 ok, 1 error, 2 usage, 3 job rejected by the node, 4 node
unreachable or timed out.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from inferad.config import Config

EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED, EXIT_UNREACHABLE = 1, 2, 3, 4

home_option = click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), envvar="INFERAD_HOME",
    help="Node home holding keys, config and database [env INFERAD_HOME; default ~/.inferad].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def open_home(path: Path | None):
    """The home, created on first use (clear errors for foreign or unreadable ones)."""
    from inferad.home import Home, HomeError

    home = Home(path)
    try:
        home.ensure()
    except HomeError as exc:
        fail(str(exc))
    return home


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="inferad")
def main() -> None:
    """Run a node of the inferad network, or send it inference jobs.

    \b
    Start here:
      inferad init  --home /tmp/n1
      inferad start --home /tmp/n1 --listen /ip4/127.0.0.1/tcp/0
      inferad submit --node-home /tmp/n1 "The capital of France is" --max-tokens 16
      inferad jobs  --home /tmp/n1
    """


@main.command()
@home_option
@json_option
def init(home: Path | None, as_json: bool) -> None:
    """Create a node home: Ed25519 node and client keys, an Ethereum keystore, config.toml.

    Existing files are kept: init never overwrites a key.
    """
    from inferad.home import Home, HomeError
    from p2p.wire import peer_id_from_public_key

    h = Home(home)
    try:
        created = h.ensure()
        info = {
            "home": str(h.path),
            "peer_id": peer_id_from_public_key(bytes(h.node_key.verify_key)),
            "client_key": bytes(h.client_key.verify_key).hex(),
            "eth_address": h.eth_address,
            "created": [p.name for p in created],
        }
    except HomeError as exc:
        fail(str(exc))
    if as_json:
        emit_json(info)
        return
    verb = "created" if created else "already initialised"
    click.echo(f"{verb}: {info['home']}" + (f" ({', '.join(info['created'])})" if created else ""))
    click.echo(f"  peer id      {info['peer_id']}")
    click.echo(f"  eth address  {info['eth_address']}")
    click.echo(f"  config       {h.config_path}")


@main.command()
@home_option
@click.option("--listen", multiple=True, metavar="MULTIADDR",
              help="libp2p listen address, repeatable [config node.listen; e.g. /ip4/127.0.0.1/tcp/0].")
@click.option("--bootstrap", multiple=True, metavar="MULTIADDR",
              help="Node to join (/ip4/…/tcp/…/p2p/12D3KooW…), repeatable [config node.bootstrap].")
@click.option("--model", "models", multiple=True, metavar="NAME|GGUF|sha256:HEX",
              help="Model to serve, repeatable: a catalog name, a GGUF path, or sha256:<hex> (label@sha256:<hex>): "
                   "a model fetched from the peers that serve it when the cache lacks it [default gemma-3-270m].")
@click.option("--adapter", "adapters", multiple=True, metavar="GGUF|sha256:HEX",
              help="LoRA adapter served on the one --model, repeatable: each is a (model, adapter) pair of its own, "
                   "which jobs name with --adapter [config engine.adapters].")
@click.option("--model-label", metavar="LABEL",
              help="Label of the one GGUF file given with --model [default: its general.name metadata, else its "
                   "file name].  For several files, write --model LABEL=PATH.")
@click.option("--model-cache-limit", type=click.IntRange(0), metavar="BYTES",
              help="Bytes of fetched models the cache keeps, least recently used evicted first [config "
                   "engine.model_cache_limit; default 0: no limit].")
@click.option("--advert-interval", type=click.IntRange(1, 3600),
              help="Seconds between adverts [config node.advert_interval; default 2]; raise it in large networks.")
@click.option("--ip-colocation-limit", type=click.IntRange(0, 10000), metavar="N",
              help="Peers sharing one IP before gossip scores them down (eclipse protection) [config "
                   "gossip.ip_colocation_limit; default 10].  0 turns it off: only for networks on one machine.")
@click.option("--no-relay-service", is_flag=True,
              help="Never relay for nodes behind NAT [config relay.relay_service; default: relay, within the "
                   "[relay] limits, while peers can dial this node].")
@click.option("--no-hole-punching", is_flag=True,
              help="Keep connections made through a relay relayed: no DCUtR hole punching [config "
                   "relay.relay_hole_punching; default: punch].")
@click.option("--no-model", is_flag=True, help="Serve no model: a pure gateway that routes jobs to others.")
@click.option("--engine", type=click.Choice(["llama", "sim"]), default="llama", show_default=True,
              help="llama: real inference with llama.cpp.  sim: a SIMULATED engine for scale tests and "
                   "benchmarks only (no model; deterministic tokens at --sim-tokens-per-s; serves 'sim').")
@click.option("--chain", "chain_path", type=click.Path(dir_okay=False, path_type=Path), envvar="INFERAD_CHAIN",
              help="The network's chain.json: route only to staked peers, admit only clients whose deposit "
                   "covers their jobs [env INFERAD_CHAIN].")
@click.option("--oracle", "run_oracle", is_flag=True,
              help="Run the settlement oracle (needs --chain and this home's account to be the contract's oracle).")
@click.option("--sim-tokens-per-s", type=click.FloatRange(0.1, 100000), default=50.0, show_default=True,
              help="Decode speed of the simulated engine.")
@click.option("--max-tokens", type=click.IntRange(1, 32768), help="Largest max_tokens a job may ask.")
@click.option("--n-ctx", type=click.IntRange(64, 1 << 24),
              help="Context window of each slot in tokens, at most the model's trained context [config "
                   "engine.n_ctx; default: the trained context capped by free memory, shared by the slots on a "
                   "CPU (logged at start)].")
@click.option("--parallel", type=click.IntRange(1, 4096), metavar="N",
              help="Slots: jobs decoded side by side in one batch [config engine.parallel; default 4 on a CPU, "
                   "what the memory holds on a GPU].  --n-ctx is each slot's context.")
@click.option("--threads", type=click.IntRange(0, 1024), help="CPU threads for llama.cpp (0 = one per core).")
@click.option("--batch-invariant", is_flag=True, default=None,
              help="Compute every token's logits with the same CPU kernels whatever shares its batch: a job's "
                   "tokens then do not depend on load, and verifiers on the same build check them exactly "
                   "[config engine.batch_invariant; default off].  Needs `make llama-invariant` and "
                   "PYTHONPATH=build/llama-invariant; prefill is slower (docs/verification.md).")
@click.option("--api-port", type=click.IntRange(-1, 65535),
              help="Serve the OpenAI-compatible HTTP API on this port (0: any free port; -1: off) "
                   "[config api.api_port; default off].  Needs a key: `inferad apikey create`.")
@click.option("--api-host", help="Address the HTTP API binds to [config api.api_host; default 127.0.0.1]. "
                                 "Anything else exposes it beyond this machine.")
@click.option("--api-max-price", type=click.IntRange(0, 2**64 - 1),
              help="Wei per token that jobs made through the HTTP API offer [config api.api_max_price; default 0].")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info",
              show_default=True)
def start(home, listen, bootstrap, advert_interval, ip_colocation_limit, models, adapters, model_label,
          model_cache_limit, no_relay_service, no_hole_punching, no_model, engine, chain_path,
          run_oracle, sim_tokens_per_s, max_tokens, n_ctx, parallel, threads, batch_invariant, api_port, api_host,
          api_max_price, log_format, log_level) -> None:
    """Run the node daemon until Ctrl-C or SIGTERM.

    Loads the models, listens for jobs on libp2p and writes <home>/node.json
    (peer id, addresses, pid) so other commands can find it.
    """
    from inferad.config import ConfigError
    from inferad.logs import setup_logging

    setup_logging(log_level, log_format)
    h = open_home(home)
    if no_model and models:
        fail("--no-model and --model exclude each other", EXIT_USAGE)
    if engine == "sim" and not models:
        models = ("sim",)
    if model_label:
        files = [m for m in models if Path(m).expanduser().is_file()]
        if len(files) != 1:
            fail(f"--model-label labels one GGUF file given with --model ({len(files)} given); for several, "
                 f"write --model LABEL=PATH", EXIT_USAGE)
        models = tuple(f"{model_label}={m}" if m == files[0] else m for m in models)
    try:
        config = h.config.with_overrides(listen=listen or None, bootstrap=bootstrap or None,
                                         advert_interval=advert_interval, ip_colocation_limit=ip_colocation_limit,
                                         relay_service=False if no_relay_service else None,
                                         relay_hole_punching=False if no_hole_punching else None,
                                         models=() if no_model else (models or None),
                                         model_cache_limit=model_cache_limit, adapters=adapters or None,
                                         max_tokens=max_tokens, n_ctx=n_ctx, parallel=parallel, n_threads=threads,
                                         batch_invariant=batch_invariant, api_port=api_port, api_host=api_host,
                                         api_max_price=api_max_price)
    except ConfigError as exc:
        fail(str(exc))
    import trio

    from inferad.node import Node, NodeError

    if _running_node(h):
        fail(f"a node is already running on {h.path} (see {h.node_info_path})")
    if run_oracle and not chain_path:
        fail("--oracle needs --chain", EXIT_USAGE)
    if engine == "llama":
        _prepare_models(config.models)
    chain_info = None
    if chain_path:
        from chain.devnet import ChainInfo
        from chain.errors import ChainError

        try:
            chain_info = ChainInfo.load(chain_path)
        except ChainError as exc:
            fail(str(exc))
    try:
        trio.run(Node(h, config, engine=engine, sim_tokens_per_s=sim_tokens_per_s, chain=chain_info,
                      oracle=run_oracle).run)
    except NodeError as exc:
        fail(str(exc))


def _prepare_models(specs) -> None:
    """Assemble and hash the models before the node starts, with a progress bar on a terminal
    (the result is cached, so this is instant the next time)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from inferad.model_cache import model_ref
    from inferad.models import ModelError, resolve

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        for spec in specs:
            if model_ref(spec) is not None:  # the cache's, or the node fetches it from peers
                continue
            task = bar.add_task(f"preparing {spec} (assemble, sha256)", total=None)
            try:
                resolve(spec, lambda done, total, task=task: bar.update(task, completed=done, total=total))
            except ModelError as exc:
                fail(str(exc))


def _running_node(h) -> dict | None:
    """The node.json of the node running on home ``h``, or None (none, or a stale file after a crash)."""
    import os

    try:
        info = json.loads(h.node_info_path.read_text())
        os.kill(int(info["pid"]), 0)
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _node_control(node_home: Path) -> Path:
    """The control socket of the node running on ``node_home`` (exit 4 if none runs there)."""
    from inferad.home import Home

    h = Home(node_home)
    info = _running_node(h)
    if info is None:
        fail(f"no node is running on {h.path} (no live {h.node_info_path}): start one, or pass --node",
             EXIT_UNREACHABLE)
    return Path(info.get("control") or h.path / "control.sock")


@main.command()
@home_option
@click.argument("prompt")
@click.option("--node", metavar="MULTIADDR", help="Node to send the job to (/ip4/…/tcp/…/p2p/12D3KooW…).")
@click.option("--node-home", type=click.Path(file_okay=False, path_type=Path),
              help="A node running on this machine, by its home: jobs go through its control socket "
                   "(no libp2p, a few ms).")
@click.option("--model", default="gemma-3-270m", show_default=True, metavar="NAME|LABEL@SHA256|SHA256|GGUF",
              help="Model the job asks for: a catalog name (always its pinned sha256), label@sha256 or a "
                   "sha256 as `inferad models` lists them, or a GGUF file (hashed here).")
@click.option("--adapter", metavar="SHA256:HEX|LABEL@SHA256|GGUF",
              help="A LoRA adapter the worker applies to --model: its sha256 (or a local GGUF file, hashed).")
@click.option("--max-tokens", type=click.IntRange(1, Config.max_tokens), default=64, show_default=True,
              help=f"At most a default node's limit ({Config.max_tokens}); a node's own limit is in its "
                   f"adverts (limits.max_tokens).")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
              help="0 means greedy decoding (reproducible).")
@click.option("--top-p", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(0, 1000), default=0, show_default=True, help="0 disables top-k.")
@click.option("--min-p", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Keep only tokens at least this fraction as likely as the most likely one (0 disables).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop sequence, repeatable.")
@click.option("--n", "n", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Choices: the prompt is evaluated once, then each is decoded in its own slot (choice i draws "
                   "with seed + i).  With more than one, the choices are printed when all are done.")
@click.option("--logprobs", type=click.IntRange(0, 20), default=None, metavar="K",
              help="Report each output token's log-probability and its K most likely alternatives.")
@click.option("--ttl", type=click.IntRange(1, Config.max_job_ttl), default=60, show_default=True,
              help=f"Seconds before the job expires (it must be answered by then; at most a default node's "
                   f"limit, {Config.max_job_ttl}); with a chain, the verification draw waits for the first "
                   f"block after expiry.")
@click.option("--max-price", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Most you pay per generated token, in wei (charged from your deposit at settlement).")
@click.option("--timeout", type=click.FloatRange(0.1), default=600, show_default=True,
              help="Seconds to wait for the whole answer.")
@click.option("--receipt", "receipt_path", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write the signed job and result there: `inferad verify FILE` checks them anywhere.")
@json_option
def submit(home, prompt, node, node_home, model, adapter, max_tokens, temperature, top_p, top_k, min_p, seed, stop,
           n, logprobs, ttl, max_price, timeout, receipt_path, as_json) -> None:
    """Sign a job with the client key, run it on a node and stream the text.

    --node-home talks to a node on this machine through its control socket
    (fast: no libp2p); --node dials any node over libp2p.  The worker's
    signature on the result is checked before exit 0.
    Exit codes: 3 rejected by the node, 4 unreachable or timed out.
    """
    if bool(node) == bool(node_home):
        fail("pass exactly one of --node MULTIADDR and --node-home PATH", EXIT_USAGE)
    control_path = _node_control(node_home) if node_home else None
    h = open_home(home)
    from inferad.client import BadResponse, JobRejected, LocalNode, NodeUnreachable, model_ref, new_job
    from inferad.models import ModelError

    try:
        ref = model_ref(model)
        adapter_ref = model_ref(adapter) if adapter else None
    except (ModelError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        job = new_job(ref, h.eth_address, prompt=prompt, ttl_s=ttl, max_price=max_price, max_tokens=max_tokens,
                      temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed, stop=tuple(stop),
                      n=n, logprobs=logprobs, adapter=adapter_ref)
    except ValueError as exc:  # n x max_tokens, or the log-probabilities, beyond one job's bounds
        fail(str(exc), EXIT_USAGE)

    def show(token) -> None:
        if not as_json and n == 1:
            click.echo(token.text, nl=False)

    def run():
        if control_path is not None:  # a node on this machine: its control socket, no trio, no libp2p
            return LocalNode(control_path, h.client_key).submit(job, on_token=show, timeout=timeout)
        import trio

        from inferad.client import NodeClient

        async def remote():
            async with NodeClient.connect(node, h.client_key, timeout=min(timeout, 30)) as client:
                return await client.submit(job, on_token=show, timeout=timeout)

        return trio.run(remote)

    try:
        completion = run()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except JobRejected as exc:
        fail(f"rejected ({exc.code}): {exc.message}", EXIT_REJECTED)
    except NodeUnreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except BadResponse as exc:
        fail(f"invalid answer: {exc}")
    if receipt_path:
        from inferad.receipt import make

        Path(receipt_path).write_text(json.dumps(make(completion.signed_job, completion.signed_result).to_json(),
                                                 indent=1) + "\n")
    if as_json:
        emit_json(completion.to_json())
        return
    from inferad.openai_response import token_string

    result = completion.result
    for i, choice in enumerate(result.all_choices()):
        if n > 1:
            click.secho(f"--- choice {i} ({choice.finish_reason}) ---", fg="cyan", err=True)
            click.echo(choice.text, nl=False)
        click.echo()
        for entry in choice.logprobs or ():
            alternatives = ", ".join(f"{token_string(t.piece)!r} {t.logprob:.3f}" for t in entry.top)
            click.echo(f"  {token_string(entry.piece)!r:>16} {entry.logprob:8.3f}"
                       + (f"   ({alternatives})" if alternatives else ""), err=True)
    click.secho(
        f"[{result.usage.completion_tokens} tokens, {result.finish_reason}; signed by worker "
        f"{result.worker[:16]}…, signature verified; job {completion.job_id[:16]}…]",
        fg="green", err=True,
    )


@main.command()
@home_option
@click.argument("job_id", required=False)
@json_option
def jobs(home, job_id, as_json) -> None:
    """List the jobs a node has seen, with their results (from its LevelDB).

    Asks the running node if there is one, else reads the database directly.
    """
    records = _ask_or_open(home, "jobs", lambda store: [
        r.to_json() for r in ([store.job(job_id)] if job_id else store.jobs()) if r], job_id=job_id)
    records.sort(key=lambda r: r["received_at"])
    if as_json:
        emit_json(records)
        return
    if not records:
        click.echo("no jobs")
        return
    for r in records:
        result = r.get("result", {})
        text = result.get("text", "").replace("\n", " ")
        verified = (r.get("verification") or {}).get("status", "")
        click.echo(f"{r['job_id'][:16]}  {r['status']:<11} {result.get('usage', {}).get('completion_tokens', '-'):>4} "
                   f"tok  {verified:<12.12} {text[:50]}")


def _ask_or_open(home: Path | None, cmd: str, offline, **args):
    """Ask the node running on ``home`` over its control socket, or read its store."""
    from inferad.home import Home

    h = Home(home)
    if _running_node(h):
        import trio

        from inferad import control

        try:
            return trio.run(lambda: control.ask(h.path / "control.sock", cmd, **args))
        except control.ControlError as exc:
            fail(str(exc))
    if not h.db_path.exists():
        fail(f"{h.path} has no database yet (no node has run there)")
    from inferad.store import Store, StoreError

    try:
        with Store(h.db_path) as store:
            return offline(store)
    except StoreError as exc:
        fail(str(exc))


def _show_network(home: Path | None, cmd: str, as_json: bool, empty: str, render) -> None:
    """Ask the running node for ``cmd`` and print it as JSON or through ``render``."""
    rows = _ask_or_open(home, cmd, lambda store: fail("no node is running on this home"))
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(empty)
    else:
        for row in rows:
            render(row)


def _render_peer(p: dict) -> None:
    gpus = ", ".join(f"{g['name']} {g['vram_mb'] // 1024} GiB" for g in p["hardware"].get("gpus", []))
    models = ", ".join(f"{m['name']} {m['tokens_per_s']:.0f} tok/s" for m in p["models"]) or "no models"
    load = p["load"]
    reach = {"public": "dialable", "private": "behind NAT: reached through its relays"}.get(p.get("reach"),
                                                                                         "reachability unknown")
    connected = "" if p["self"] else f"  connected {p['connection']}" if p.get("connection") else "  not connected"
    click.echo(f"{p['peer_id']}{' (this node)' if p['self'] else ''}  {reach}{connected}\n"
               f"    {p['engine']}  {gpus or p['hardware']['cpu'] + ' x' + str(p['hardware']['cores'])}  "
               f"{models}\n    load {load['running']} running, {load['queued']} queued of "
               f"{load['capacity']}   advert {p['advert_age_s']} s old   reputation {p['reputation']:.2f}")


def _render_model(m: dict) -> None:
    click.echo(f"{m['id']}  sha256 {m['sha256'][:16]}…  {len(m['providers'])} provider(s)")
    for p in m["providers"]:
        click.echo(f"    {p['peer_id']}  {p['tokens_per_s']:.0f} tok/s  n_ctx {p['n_ctx']}  queued {p['queued']}")


@main.command()
@home_option
@json_option
def peers(home, as_json) -> None:
    """Every peer the running node hears: hardware, models with tokens/s, load, advert age."""
    _show_network(home, "peers", as_json, "no peers yet", _render_peer)


@main.group(invoke_without_command=True)
@home_option
@json_option
@click.pass_context
def models(ctx, home, as_json) -> None:
    """Models served in the network the running node is part of, and who serves them.

    \b
    inferad models                 what the network serves (asks the running node)
    inferad models list            the model cache on this machine
    inferad models pull REF        fetch sha256:<hex> from the peers that serve it (the running node does)
    inferad models rm REF          remove a model from the cache
    """
    if ctx.invoked_subcommand is None:
        _show_network(home, "models", as_json, "no models in the network yet", _render_model)


@models.command("list")
@json_option
def models_list(as_json) -> None:
    """The model cache: label, sha256, size, source (catalog, or the peers it came from), last use."""
    from inferad.model_cache import ModelCache

    cache = ModelCache()
    rows = [m.to_json() for m in cache.entries()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"the model cache {cache.root} is empty")
    for m in rows:
        source = m["source"] if m["source"] == "catalog" else f"from {len(m['source'].split(','))} peer(s)"
        click.echo(f"{m['label']}  sha256:{m['sha256']}  {m['size'] / 1e6:.0f} MB  {source}  "
                   f"used {time.strftime('%Y-%m-%d %H:%M', time.localtime(m['last_used']))}")


@models.command("rm")
@click.argument("ref")
def models_rm(ref) -> None:
    """Remove REF (sha256:<hex>, label@sha256:<hex> or a label) from the model cache."""
    from inferad.model_cache import ModelCache
    from inferad.models import ModelError

    cache = ModelCache()
    try:
        found = cache.find(ref)
    except ModelError as exc:
        fail(str(exc))
    if found is None:
        fail(f"no cached model is {ref!r} (`inferad models list` shows the cache)")
    cache.remove(found)
    click.echo(f"removed {found.label} (sha256:{found.sha256}, {found.size / 1e6:.0f} MB)")


@models.command("pull")
@home_option
@click.argument("ref")
@click.option("--timeout", type=click.FloatRange(1), default=3600, show_default=True,
              help="Seconds without an answer from the node before giving up.")
def models_pull(home, ref, timeout) -> None:
    """Fetch REF (sha256:<hex> or label@sha256:<hex>) into the cache from the peers that serve it.

    The node running on --home fetches it (it knows the peers): chunks come from every provider
    at once, each checked against the root its provider signed, the whole file against the sha256.
    An interrupted pull resumes where it stopped."""
    import msgpack
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from inferad import control
    from p2p import wire

    path = _node_control(open_home(home).path)
    decoder = wire.FrameDecoder(control.MAX_REPLY)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    try:
        sock = control.connect(path, "pull", timeout=timeout, ref=ref)
    except control.ControlError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    with sock, Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"pulling {ref[:24]}", total=None)
        while True:
            while (frame := decoder.next_frame()) is None:
                try:
                    data = sock.recv(1 << 16)
                except OSError as exc:
                    fail(f"the node stopped answering: {exc}", EXIT_UNREACHABLE)
                if not data:
                    fail("the node closed the connection before the pull ended (see its log)", EXIT_UNREACHABLE)
                decoder.feed(data)
            reply = msgpack.unpackb(frame)
            if "progress" in reply:
                bar.update(task, completed=reply["progress"]["done"], total=reply["progress"]["total"])
                continue
            break
    if "error" in reply:
        fail(reply["error"])
    m = reply["ok"]
    click.echo(f"{m['label']}  sha256:{m['sha256']}  {m['size'] / 1e6:.0f} MB  in {m['path']}")


@main.command()
@home_option
@json_option
def status(home, as_json) -> None:
    """What the node running on this home is doing: peers, models, queue, reputation, stake, earnings."""
    info = _ask_or_open(home, "status", lambda store: fail("no node is running on this home"))
    if as_json:
        emit_json(info)
        return
    from rich.console import Console
    from rich.table import Table

    peers = _ask_or_open(home, "peers", lambda store: [])
    console = Console()
    console.print(f"[bold]{info['peer_id']}[/bold]  up {info['uptime_s']} s  inferad {info['version']}  "
                  f"engine {info['engine']}  active jobs {info['active_jobs']}  reachability {info['reachability']}")
    for addr in info["addrs"]:
        console.print(f"listen  {addr}")
    for addr in info.get("relay_addrs", []):
        console.print(f"relayed {addr}")
    if info.get("api"):
        console.print(f"API     {info['api']}/v1")
    models = Table("model", "sha256", "tokens/s", "running", "queued", title="served here")
    for m in info["models"]:
        models.add_row(m["name"], m["sha256"][:12] + "…", f"{m['tokens_per_s']:.1f}", str(m["running"]),
                       str(m["queued"]))
    console.print(models if info["models"] else "serves no model (a gateway)")
    table = Table("peer", "models", "load", "reputation", "advert age", title=f"{len(peers)} peer(s) heard")
    for p in peers:
        load = p["load"]
        table.add_row(p["peer_id"][-12:] + (" (self)" if p["self"] else ""),
                      ", ".join(f"{m['name']} {m['tokens_per_s']:.0f} tok/s" for m in p["models"]) or "-",
                      f"{load['running']}+{load['queued']}/{load['capacity']}", f"{p['reputation']:.2f}",
                      f"{p['advert_age_s']} s")
    console.print(table)
    if info.get("verification"):
        v = info["verification"]
        console.print(f"verification  reputation {info['reputation']:.2f}, verified here {v['verified_here']}, "
                      f"attestations known {v['attestations']}, proven lies {v['proven_lies']}")
    chain = info.get("chain")
    if chain:
        console.print(f"chain  {chain['eth']}  {'staked' if chain['staked'] else '[red]NOT staked[/red]'} "
                      f"{chain['stake_wei'] / 10**18:g} ETH; epoch {chain['epoch']} "
                      f"({chain['epoch_seconds']} s), earned this epoch {chain['earned_this_epoch_wei']} wei "
                      f"(gross, before fee and verification); last settled {chain['last_settled_epoch']}")


@main.command()
@home_option
@click.argument("key")
@json_option
def evidence(home, key, as_json) -> None:
    """Fetch the evidence that convicted a worker (KEY: its hash, as in the Slashed event,
    or the job id) and check it here: signatures, quorum, and a re-score on this node's model."""
    view = _ask_or_open(home, "evidence", lambda store: fail("no node is running on this home"), key=key)
    if as_json:
        emit_json(view)
        return
    click.echo(f"evidence {view['hash']}\n  job {view['job_id']}  model {view['model']}\n"
               f"  worker {view['worker']}\n  {view['checked']}")
    for a in view["attestations"]:
        click.echo(f"  {a['verifier']}: {a['verdict']} ({a['reason']})")
    if "rescored_here" in view:
        click.echo(f"  re-scored here: {view['rescored_here']['verdict']} ({view['rescored_here']['reason']})")


@main.command()
@click.argument("receipt_file", metavar="RECEIPT", type=click.File("r"))
@click.option("--model", "model_path", metavar="GGUF", type=click.Path(dir_okay=False),
              help="The job's model file, when neither the catalog nor the model cache has its sha256.")
@click.option("--adapter", "adapter_path", metavar="GGUF", type=click.Path(dir_okay=False),
              help="The job's LoRA adapter file, when the model cache does not have its sha256.")
@click.option("--threads", type=click.IntRange(0), default=0, help="llama.cpp threads (0: every core).")
@json_option
def verify(receipt_file, model_path, adapter_path, threads, as_json) -> None:
    """Check a receipt (from `submit --receipt` or GET /v1/jobs/ID/receipt) on this machine.

    The client's and the worker's signatures and the job id are checked, then the result is
    re-scored on the local copy of the job's model as a drawn verifier re-scores it; the verdict
    and each position's figures are printed.  No node and no network are needed.
    Exit codes: 0 valid, 1 invalid (forged, or signatures that do not hold), 2 usage,
    3 inconclusive (the model is not on this machine).
    """
    from inferad.audit import audit
    from inferad.receipt import ReceiptError, parse

    try:
        document = json.loads(receipt_file.read())
    except ValueError as exc:
        fail(f"{receipt_file.name} is not JSON: {exc}", EXIT_USAGE)
    if not isinstance(document, dict) or "receipt" not in document:
        fail(f"{receipt_file.name} is not an inferad receipt", EXIT_USAGE)
    try:
        receipt = parse(document)
    except ReceiptError as exc:
        if as_json:
            emit_json({"verdict": "invalid", "reason": str(exc)})
        else:
            click.secho(f"invalid: {exc}", fg="red")
        sys.exit(1)
    checked = audit(receipt, model_path, adapter_path=adapter_path, threads=threads)
    if as_json:
        emit_json({"job_id": receipt.job_id, "worker": receipt.result.signer_peer_id, **checked.to_json()})
    else:
        colour = {"valid": "green", "invalid": "red"}.get(checked.verdict, "yellow")
        click.echo(f"job {receipt.job_id}\nworker {receipt.result.signer_peer_id} (signature verified)")
        for index, rows in enumerate(checked.positions):
            if len(checked.positions) > 1:
                click.echo(f"choice {index}:")
            for row in rows:
                drawn = (f"  u {row['u']:.4f} in [{row['interval'][0]:.4f}, {row['interval'][1]:.4f})"
                         if "u" in row else "")
                click.echo(f"  {row['index']:>4} {row['text']!r:>14} logprob {row['logprob']:8.3f} "
                           f"gap {row['gap']:6.3f}{drawn}{'  FORBIDDEN' if row.get('forbidden') else ''}")
        click.secho(f"{checked.verdict}: {checked.reason}", fg=colour)
    sys.exit({"valid": 0, "invalid": 1}.get(checked.verdict, 3))


@main.group()
def apikey() -> None:
    """Keys for the node's OpenAI-compatible HTTP API (Authorization: Bearer KEY)."""


@apikey.command("create")
@home_option
@click.option("--name", default="default", show_default=True, help="A label, to recognise the key later.")
def apikey_create(home, name) -> None:
    """Create a key; it is printed once (only its hash is stored) and works at once on a running node."""
    from inferad.apikeys import ApiKeys

    key, entry = ApiKeys(open_home(home).path / "apikeys.json").create(name)
    click.echo(key)
    click.echo(f"created key {entry['id']} ({name}); keep it secret, it cannot be shown again", err=True)


@apikey.command("list")
@home_option
@json_option
def apikey_list(home, as_json) -> None:
    """The keys of this home (ids and names; the keys themselves are not stored)."""
    from inferad.apikeys import ApiKeyError, ApiKeys

    try:
        keys = ApiKeys(open_home(home).path / "apikeys.json").list()
    except ApiKeyError as exc:
        fail(str(exc))
    if as_json:
        emit_json(keys)
        return
    for k in keys:
        click.echo(f"{k['id']}  {k['name']}  created {time.strftime('%Y-%m-%d %H:%M', time.localtime(k['created']))}")
    if not keys:
        click.echo("no API keys (create one with `inferad apikey create`)")


@apikey.command("revoke")
@home_option
@click.argument("key_id")
def apikey_revoke(home, key_id) -> None:
    """Revoke a key by its id (see `inferad apikey list`); a running node refuses it at once."""
    from inferad.apikeys import ApiKeyError, ApiKeys

    try:
        ApiKeys(open_home(home).path / "apikeys.json").revoke(key_id)
    except ApiKeyError as exc:
        fail(str(exc))
    click.echo(f"revoked {key_id}")


# ---------------------------------------------------------------------- devnet and chain

@main.group()
def devnet() -> None:
    """Local development networks (127.0.0.1 only)."""


@devnet.command("chain")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where to write chain.json and keep anvil's state (reused by the next run).")
@click.option("--fund", "fund_homes", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="HOME", help="Give this home's Ethereum account 100 devnet ETH, repeatable.")
@click.option("--oracle", "oracle_home", type=click.Path(file_okay=False, path_type=Path), metavar="HOME",
              help="The home whose node will run the oracle [default: the deployer dev account].")
@click.option("--epoch-seconds", type=click.IntRange(5, 86400), default=30, show_default=True,
              help="Settlement period of the network.")
@click.option("--block-time", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between blocks: verification draws on the first block after a job expires.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address anvil listens on: another lets nodes in other network namespaces or on other "
                   "machines reach this devnet's chain (anvil has no authentication: a private network only).")
def devnet_chain(directory: Path, fund_homes, oracle_home, epoch_seconds, block_time, host) -> None:
    """Run anvil on 127.0.0.1 (or --host), deploy the registry, fund accounts, write DIR/chain.json.

    Runs until Ctrl-C; the chain's state is kept in DIR/anvil-state.json, so the
    next run continues the same chain (and reuses the deployment).
    """
    import signal
    import threading

    from chain.devnet import Anvil, ChainInfo, deploy
    from chain.errors import ChainError

    directory.mkdir(parents=True, exist_ok=True)
    state, info_path = directory / "anvil-state.json", directory / "chain.json"
    resume = state.exists() and info_path.exists()
    try:
        # Resuming: the same port too, so running nodes find the chain again.
        port = int(ChainInfo.load(info_path).rpc_url.rsplit(":", 1)[1]) if resume else 0
        anvil = Anvil(state=state, port=port, block_time=block_time, host=host)
    except ChainError as exc:
        fail(str(exc))
    try:
        if resume:
            info = ChainInfo.load(info_path)
            click.echo(f"resumed the chain in {state}")
        else:
            oracle = open_home(oracle_home).eth_address if oracle_home else None
            info = deploy(anvil.rpc_url, oracle=oracle, fund=[open_home(h).eth_address for h in fund_homes],
                          epoch_seconds=epoch_seconds)
            click.echo(f"deployed InferadRegistry at {info.contract}")
        info.save(info_path)
        click.echo(f"chain {info.chain_id} at {info.rpc_url}; wrote {info_path}; Ctrl-C stops it")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
    except ChainError as exc:
        fail(str(exc))
    finally:
        anvil.stop()


@devnet.command("up")
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Node processes to start (a job needs worker, gateway and a verifier to differ: 3 or more).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where homes, logs, chain.json and devnet.json go; wiped at the next `up`.")
@click.option("--epoch-seconds", type=click.IntRange(5, 86400), default=20, show_default=True,
              help="Settlement period.")
def devnet_up(nodes, directory, epoch_seconds) -> None:
    """Start a whole network here: anvil + contract, N staked nodes (node1: oracle and HTTP API),
    a funded client and an API key; prints where everything is and runs until Ctrl-C,
    which stops every process it started."""
    import signal
    import threading

    from rich.console import Console
    from rich.table import Table

    from chain.errors import ChainError
    from inferad.devnet import Devnet, DevnetError

    console = Console(stderr=True)
    started = time.monotonic()
    net = Devnet(directory.resolve(), nodes=nodes, epoch_seconds=epoch_seconds,
                 say=lambda line: console.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim] {line}"))
    def stop(*_) -> None:  # Ctrl-C or SIGTERM, during start-up too (and even where SIGINT was ignored)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        summary = net.up()
        table = Table(title=f"inferad devnet: {nodes} node(s), chain {summary['rpc_url']}")
        for column in ("node", "role", "peer id", "libp2p", "eth"):
            table.add_column(column)
        for n in summary["nodes"]:
            table.add_row(n["name"], n["role"], n["peer_id"], n["addr"].split("/p2p/")[0], n["eth"])
        Console().print(table)
        click.echo(f"API      {summary['api']}\nAPI key  {summary['api_key']}\n"
                   f"client   inferad submit --home {summary['client_home']} --node-home "
                   f"{summary['nodes'][0]['home']} \"Hello\" --max-price 1000\n"
                   f"chain    {summary['chain']}\nall      {directory / 'devnet.json'}\n"
                   f"ready in {time.monotonic() - started:.1f} s; Ctrl-C stops everything")
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    except (DevnetError, ChainError, OSError) as exc:
        console.print(f"[red]devnet failed:[/red] {exc}")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave processes behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        console.print("stopping the devnet…")
        net.down()
        console.print("stopped: no process of this devnet is left")


@main.group("chain")
def chain_group() -> None:
    """Stakes, deposits and rewards on the network's contract (see --chain)."""


chain_option = click.option("--chain", "chain_path", type=click.Path(dir_okay=False, path_type=Path),
                            required=True, envvar="INFERAD_CHAIN",
                            help="The network's chain.json (RPC URL, chain id, contract) [env INFERAD_CHAIN].")


def _registry(home: Path | None, chain_path: Path):
    from chain.contract import Registry
    from chain.devnet import ChainInfo
    from chain.errors import ChainError
    from inferad.home import HomeError

    h = open_home(home)
    try:
        info = ChainInfo.load(chain_path)
        return h, Registry(info.web3(), info.contract, h.eth_account())
    except (ChainError, HomeError) as exc:
        fail(str(exc))


def _wei(eth: str) -> int:
    from decimal import Decimal, InvalidOperation

    try:
        wei = Decimal(eth) * 10**18
    except InvalidOperation:
        fail(f"{eth!r} is not an amount of ETH", EXIT_USAGE)
    if wei <= 0 or wei != wei.to_integral_value():
        fail(f"{eth!r} is not a positive amount of ETH (at most 18 decimals)", EXIT_USAGE)
    return int(wei)


def _transact(home, chain_path, action, amount: str | None = None) -> None:
    from chain.errors import ChainError

    h, registry = _registry(home, chain_path)
    try:
        receipt = action(registry, h) if amount is None else action(registry, h, _wei(amount))
    except ChainError as exc:
        fail(f"the chain refused: {exc}")
    click.echo(f"ok: transaction {receipt['transactionHash'].hex()} in block {receipt['blockNumber']} "
               f"({receipt['gasUsed']} gas)")


@chain_group.command()
@home_option
@chain_option
@click.argument("amount")
def stake(home, chain_path, amount) -> None:
    """Register this node's Ed25519 key with AMOUNT ETH of stake, or add AMOUNT to it."""
    def act(registry, h, wei):
        if registry.node(h.eth_address).ed_key == b"\0" * 32:
            return registry.register(bytes(h.node_key.verify_key), wei)
        return registry.add_stake(wei)

    _transact(home, chain_path, act, amount)


@chain_group.command()
@home_option
@chain_option
@click.argument("amount")
def unstake(home, chain_path, amount) -> None:
    """Start unbonding AMOUNT ETH of stake (still slashable until withdrawn)."""
    _transact(home, chain_path, lambda registry, h, wei: registry.request_unstake(wei), amount)


@chain_group.command()
@home_option
@chain_option
def withdraw(home, chain_path) -> None:
    """Withdraw unbonded stake and deposits whose delay has passed."""
    from chain.errors import ContractRevert

    def act(registry, h):
        node, client, receipt = registry.node(h.eth_address), registry.client(h.eth_address), None
        if node.unbonding:
            receipt = registry.withdraw()
        if client.withdrawing:
            receipt = registry.withdraw_deposit()
        if receipt is None:
            raise ContractRevert("NothingToWithdraw")
        return receipt

    _transact(home, chain_path, act)


@chain_group.command()
@home_option
@chain_option
@click.argument("amount")
def deposit(home, chain_path, amount) -> None:
    """Deposit AMOUNT ETH to pay for the jobs this home's client key submits."""
    _transact(home, chain_path, lambda registry, h, wei: registry.deposit(wei), amount)


@chain_group.command()
@home_option
@chain_option
def claim(home, chain_path) -> None:
    """Claim every settled epoch's rewards in one transaction.

    The proof comes from the oracle, through the node running on this home.
    """
    from chain.errors import ChainError
    from inferad import control

    h, registry = _registry(home, chain_path)
    if not _running_node(h):
        fail(f"start the node of {h.path} first: it fetches the reward proof from the oracle")
    import trio

    try:
        proof = trio.run(lambda: control.ask(h.path / "control.sock", "proof", account=h.eth_address))
    except control.ControlError as exc:
        fail(str(exc))
    try:
        already = registry.value("claimed", h.eth_address)
        if proof["cumulative"] <= already:
            click.echo(f"nothing to claim: {already} wei claimed of {proof['cumulative']} wei earned")
            return
        receipt = registry.claim(proof["cumulative"], [bytes.fromhex(p) for p in proof["proof"]])
    except ChainError as exc:
        fail(f"the chain refused: {exc}")
    click.echo(f"claimed {proof['cumulative'] - already} wei (all rewards through epoch {proof['epoch']}) "
               f"in block {receipt['blockNumber']}")


def _claimable(h, registry) -> int | None:
    """Rewards settled but not claimed yet, if this home's node can reach the oracle."""
    import trio

    from inferad import control

    if not _running_node(h):
        return None
    try:
        proof = trio.run(lambda: control.ask(h.path / "control.sock", "proof", account=h.eth_address))
    except control.ControlError as exc:
        return 0 if "no settled rewards" in str(exc) else None
    return max(proof["cumulative"] - registry.value("claimed", h.eth_address), 0)


@chain_group.command("status")
@home_option
@chain_option
@json_option
def chain_status(home, chain_path, as_json) -> None:
    """Stake, unbonding, deposit, claimable rewards and the last settled epoch."""
    from chain.errors import ChainError

    h, registry = _registry(home, chain_path)
    try:
        node, client = registry.node(h.eth_address), registry.client(h.eth_address)
        info = {
            "address": h.eth_address,
            "balance_wei": registry.w3.eth.get_balance(h.eth_address),
            "staked": registry.is_staked(h.eth_address),
            "ed25519_key_registered": node.ed_key.hex() if node.ed_key != b"\0" * 32 else None,
            "ed25519_key_matches_home": node.ed_key == bytes(h.node_key.verify_key),
            "stake_wei": node.stake, "unbonding_wei": node.unbonding, "unbonding_until": node.unbonding_at,
            "deposit_wei": client.deposit, "withdrawing_wei": client.withdrawing,
            "withdraw_until": client.withdraw_at,
            "claimed_wei": registry.value("claimed", h.eth_address),
            "claimable_wei": _claimable(h, registry),
            "last_settled_epoch": registry.value("lastEpoch"),
            "min_stake_wei": registry.value("minStake"),
            "slashes": [{"epoch": e["epoch"], "amount_wei": e["amount"], "evidence": e["evidenceHash"].hex()}
                        for e in registry.events("Slashed") if e["node"] == h.eth_address],
        }
    except ChainError as exc:
        fail(str(exc))
    if as_json:
        emit_json(info)
        return
    eth = lambda wei: f"{wei / 10**18:g} ETH"  # noqa: E731
    click.echo(f"account   {info['address']}  balance {eth(info['balance_wei'])}")
    click.echo(f"stake     {eth(info['stake_wei'])} ({'staked' if info['staked'] else 'not staked'}; "
               f"min {eth(info['min_stake_wei'])}), unbonding {eth(info['unbonding_wei'])}")
    click.echo(f"deposit   {eth(info['deposit_wei'])}, withdrawing {eth(info['withdrawing_wei'])}")
    claimable = "unknown (start this home's node to ask the oracle)" if info["claimable_wei"] is None \
        else eth(info["claimable_wei"])
    click.echo(f"rewards   claimed {eth(info['claimed_wei'])}, claimable {claimable}; "
               f"last settled epoch {info['last_settled_epoch']}")
    for slash in info["slashes"]:
        click.echo(f"slashed   {eth(slash['amount_wei'])} in epoch {slash['epoch']}, evidence {slash['evidence']} "
                   f"(`inferad evidence {slash['evidence']}`)")


if __name__ == "__main__":
    main()
