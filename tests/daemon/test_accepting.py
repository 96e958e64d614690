"""The accept loop both TCP ports run (meshgpu/accepting.py): how many connections a
wakeup takes is read from the listening socket's accept queue."""

from __future__ import annotations

import socket

from meshgpu.accepting import ACCEPT_BURST, queued


def test_queued_reads_the_accept_queue() -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    clients = [socket.create_connection(listening.getsockname()) for _ in range(3)]
    try:
        assert queued(listening) == 3
        listening.accept()[0].close()
        assert queued(listening) == 2
    finally:
        for client in clients:
            client.close()
        listening.close()
    local = socket.socket(socket.AF_UNIX)
    try:
        assert queued(local) == ACCEPT_BURST  # not TCP: it cannot say
    finally:
        local.close()
