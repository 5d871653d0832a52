"""Free loopback ports for servers a test starts."""
from __future__ import annotations

import contextlib
import socket


def free_ports(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago.

    Every socket stays bound until all are chosen: ports picked one after another can repeat
    (the kernel may hand a just-closed port out again), and two servers of one test on the same
    port make nginx merge their listeners (e.g. "no ssl_certificate ... for listen ... ssl").

    >>> a, b, c = free_ports(3)
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """One loopback port that was free a moment ago (for several in one test: `free_ports`)."""
    return free_ports(1, kind)[0]
