"""What deploys/*.py need when the plain `pyinfra` CLI runs them: every inventory host's context,
built by `ensemble.contexts` exactly as `ensemble deploy` builds it.

Example (deploys/shard.py)::

    hosts = [host_from_data(h.name, h.data.dict()) for h in inventory]
    fleet_host(cli_contexts(host.data.get("ensemble_spec"), hosts, kept_secrets_reader(inventory)))
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ensemble.contexts import DeployContext, fleet_contexts
from ensemble.kept import fleet_size, parse_kept, refuse_shards_beyond, require_all_read
from ensemble.providers.base import Host
from ensemble.secrets import merge_secrets

_CLI_CONTEXTS: dict[str, dict[str, DeployContext]] = {}
_CLI_LOCK = threading.Lock()  # gevent's cooperative lock once pyinfra's CLI has patched threading


def cli_contexts(spec_path: str, hosts: list[Host], read_kept: Callable[[str], str | None]) -> dict[str, DeployContext]:
    """Every inventory host's context when the plain `pyinfra` CLI runs deploys/*.py.

    Computed once per process (the CLI executes a deploy file once per host), as `ensemble deploy`
    computes them: the spec, the fleet's size (kept.fleet_size over the front door's record; shards
    beyond it refused), the provider's deploy environment, the checked Jitsi keyring, and the secrets
    every host keeps (`read_kept(host name)` returns kept.KEPT_COMMAND's output), completed where
    missing. The inventory must list the whole fleet (every shard and the front door).

    Example::

        cli_contexts("ensemble.toml", hosts, lambda name: "...")[host.name]
    """
    with _CLI_LOCK:
        if spec_path not in _CLI_CONTEXTS:
            from ensemble.keyring import jitsi_keyring
            from ensemble.providers import get_provider
            from ensemble.spec import load_spec

            declared = load_spec(spec_path)
            kept = parse_kept({h.name: read_kept(h.name) for h in hosts}, hosts)
            require_all_read(kept)
            size = fleet_size(declared, kept.recorded)
            refuse_shards_beyond(declared, size, hosts)
            spec = declared.with_shards(size)
            env = get_provider(spec).deploy_environment(spec)
            store, _ = merge_secrets(env.spec, {h.name: kept.secrets.get(h.name, "") for h in hosts}, hosts)
            _CLI_CONTEXTS[spec_path] = fleet_contexts(env, store, hosts, keyring=jitsi_keyring(env.spec),
                                                      spec_shards=declared.fleet.shards)
    return _CLI_CONTEXTS[spec_path]
