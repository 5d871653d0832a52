"""A static pyinfra inventory: two shards and a front door at fixed addresses (documentation range).

Copy it, put your hosts' addresses, and run::

    ENSEMBLE_CONFIG=ensemble.toml pyinfra -y inventories/example.py deploys/shard.py
    ENSEMBLE_CONFIG=ensemble.toml pyinfra -y inventories/example.py deploys/frontdoor.py

Host names are the public DNS names of the spec (shard domains, front door domain).
"""

_ssh = {"ssh_user": "root", "ssh_key": "~/.ssh/id_ed25519", "ssh_known_hosts_file": "~/.ssh/known_hosts",
        "ssh_strict_host_key_checking": "yes"}

shards = [
    ("demo-1.meet.example.org", {**_ssh, "ssh_hostname": "203.0.113.11", "ensemble_role": "shard",
                                 "ensemble_shard": 1}),
    ("demo-2.meet.example.org", {**_ssh, "ssh_hostname": "203.0.113.12", "ensemble_role": "shard",
                                 "ensemble_shard": 2}),
]
frontdoor = [
    ("meet.example.org", {**_ssh, "ssh_hostname": "203.0.113.10", "ensemble_role": "frontdoor"}),
]
