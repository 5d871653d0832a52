"""Inventory: the fleet's hosts as pyinfra targets (name + host data), with no pyinfra import.

A `Target` is what the runner connects to: the host's public name (shard domain or front
door domain) and its host data (SSH settings with a pinned known_hosts file and strict
checking, role, shard number, addresses). The same data feeds static inventory files
for the plain `pyinfra` CLI (inventories/*.py).

Example::

    targets = targets_for(provider.ensure_hosts(spec))
    targets[0].data["ensemble_role"]      # "shard"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ensemble.providers.base import Host, Provider
from ensemble.spec import FleetSpec


@dataclass(frozen=True)
class Target:
    """One host to run on: its inventory name and pyinfra host data.

    Example::

        Target("demo-1.meet.test", {"ssh_hostname": "10.214.4.11", "ssh_user": "root"})
    """

    name: str
    data: dict[str, Any]


def ssh_data(address: str, *, user: str = "root", port: int = 22, key: str | None = None,
             known_hosts: str | None = None) -> dict[str, Any]:
    """pyinfra host data to reach a host over SSH with a key and a pinned known_hosts file.

    Example::

        ssh_data("10.214.4.11", key="/root/.ssh/id", known_hosts="/var/lib/ensemble/demo/known_hosts")
    """
    data: dict[str, Any] = {"ssh_hostname": address, "ssh_user": user, "ssh_port": port,
                            "ssh_connect_retries": 2, "ssh_connect_retry_min_delay": 0.5,
                            "ssh_connect_retry_max_delay": 1.0}
    if key:
        data["ssh_key"] = key
    if known_hosts:
        # Pinned keys, strict checking: an unknown or changed host key is an error, never accepted.
        data["ssh_known_hosts_file"] = known_hosts
        data["ssh_strict_host_key_checking"] = "yes"
    return data


def host_data(host: Host) -> dict[str, Any]:
    """pyinfra host data for one provider Host: SSH settings plus what the deploys read.

    Example::

        host_data(Host("demo-1.meet.test", "shard", 1, "10.214.4.11"))["ensemble_shard"]   # 1
    """
    return {
        **ssh_data(host.address, user=host.ssh_user, port=host.ssh_port, key=host.ssh_key,
                   known_hosts=host.known_hosts),
        "ensemble_role": host.role,
        "ensemble_shard": host.shard,
        "ensemble_public_ipv4": host.public_ipv4 or host.address,
        "ensemble_private_ipv4": host.private_ipv4 or host.address,
        "ensemble_ipv6": host.ipv6,
    }


def targets_for(hosts: list[Host]) -> list[Target]:
    """Targets for these hosts, front door last (shards first in shard order).

    Example::

        [t.name for t in targets_for(hosts)]   # ["demo-1...", "demo-2...", "meet..."]
    """
    ordered = sorted(hosts, key=lambda h: (h.role == "frontdoor", h.shard or 0, h.name))
    return [Target(h.name, host_data(h)) for h in ordered]


def host_from_data(name: str, data: dict[str, Any]) -> Host:
    """The Host a static inventory entry describes (for deploys run by the plain pyinfra CLI).

    Example::

        host_from_data("demo-1.meet.test", {"ssh_hostname": "10.214.4.11", "ensemble_role": "shard",
                                            "ensemble_shard": 1})
    """
    address = data.get("ssh_hostname") or name
    return Host(name=name, role=data.get("ensemble_role", "shard"), shard=data.get("ensemble_shard"),
                address=address, ssh_user=data.get("ssh_user", "root"), ssh_port=data.get("ssh_port", 22),
                ssh_key=data.get("ssh_key"), known_hosts=data.get("ssh_known_hosts_file"),
                public_ipv4=data.get("ensemble_public_ipv4") or address,
                private_ipv4=data.get("ensemble_private_ipv4") or address, ipv6=data.get("ensemble_ipv6"))


def inventory_of(spec: FleetSpec, provider: Provider | None = None) -> dict[str, Any]:
    """{host name: pyinfra host data} plus groups, from what the provider finds (tags, for scaleway).

    Example::

        inventory_of(spec)["hosts"]["demo-1.meet.example.org"]["ssh_hostname"]
    """
    from ensemble.identity import guard
    from ensemble.providers import get_provider

    provider = provider or get_provider(spec)
    hosts, _ = guard(spec, provider, "inventory", disruptive_ok=True)  # this spec's fleet, or one line
    targets = targets_for(hosts)
    roles = {h.name: h.role for h in hosts}
    return {"hosts": {t.name: t.data for t in targets},
            "groups": {"shards": [t.name for t in targets if roles[t.name] == "shard"],
                       "frontdoor": [t.name for t in targets if roles[t.name] == "frontdoor"]}}


def pyinfra_groups(spec: FleetSpec, provider: Provider | None = None) -> dict[str, list]:
    """What a pyinfra inventory function returns: {group: [(name, data), ...]}."""
    inventory = inventory_of(spec, provider)
    data = inventory["hosts"]
    return {group: [(name, data[name]) for name in names] for group, names in inventory["groups"].items()}


def scaleway() -> dict[str, list]:
    """pyinfra inventory function: the fleet's hosts found by their tags, with SSH data.

    Reads the spec named by $ENSEMBLE_CONFIG (default ./ensemble.toml); credentials as for `scw`.

    Example::

        ENSEMBLE_CONFIG=prod.toml pyinfra ensemble.inventory:scaleway deploys/shard.py
    """
    import os

    from ensemble.spec import load_spec

    return pyinfra_groups(load_spec(os.environ.get("ENSEMBLE_CONFIG", "ensemble.toml")))
