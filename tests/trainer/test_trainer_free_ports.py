"""The ports tests, benchmarks and the test-bed listen on never come from the ephemeral range.

Covers ``trainscale.trainer.launch.local.find_free_ports``: a port handed out by ``bind(0)``
lies in the range every outgoing connection draws from, so between its release and the
server's bind a gloo pair or an apiserver connection of a parallel test lane could take it
(CI saw an agent's metrics port, ``base + 1``, in use). Checked here with real sockets:

- the ports lie at or above ``PORT_FLOOR`` and below the kernel's ephemeral range, are
  distinct, and are free (a server binds each right after);
- ``consecutive`` gives ``base, base + 1, ...`` (pod ``i`` serves on ``base + i``);
- a port that is taken is never handed out (the range narrowed to nine ports, two held);
- with no room below the ephemeral range it falls back to the kernel's choice;
- a bad count is refused.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from trainscale.trainer.launch import local
from trainscale.trainer.launch.local import PORT_FLOOR, find_free_port, find_free_ports


def _listen(stack: ExitStack, ports: list[int]) -> None:
    """A listener on each port, closed with ``stack`` (raises if one is taken)."""
    for port in ports:
        sock = stack.enter_context(socket.socket())
        sock.bind(("127.0.0.1", port))
        sock.listen()


def _bind_all(ports: list[int]) -> None:
    with ExitStack() as stack:
        _listen(stack, ports)


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = local._ephemeral_low()
    for _ in range(20):
        ports = find_free_ports(5)
        assert len(set(ports)) == 5
        assert all(PORT_FLOOR <= p < low for p in ports), (ports, low)
        _bind_all(ports)
    assert PORT_FLOOR <= find_free_port() < low


def test_consecutive_ports_are_a_run() -> None:
    for _ in range(20):
        ports = find_free_ports(4, consecutive=True)
        assert ports == list(range(ports[0], ports[0] + 4))
        _bind_all(ports)


@pytest.fixture
def held() -> Iterator[int]:
    """Three ports in a row below the ephemeral range, the first two held by listeners."""
    base = find_free_ports(3, consecutive=True)[0]
    with ExitStack() as stack:
        _listen(stack, [base, base + 1])
        yield base


def test_a_taken_port_is_never_handed_out(held: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "PORT_FLOOR", held)
    monkeypatch.setattr(local, "_ephemeral_low", lambda: held + 3 + 6)  # 3 ports, + room
    # The range is held .. held + 8; of its first three, only held + 2 is free.
    seen = {find_free_ports(1)[0] for _ in range(200)}
    assert held not in seen and held + 1 not in seen
    runs = {tuple(find_free_ports(2, consecutive=True)) for _ in range(50)}
    assert all(held not in r and held + 1 not in r for r in runs)


def test_without_room_below_the_ephemeral_range_the_kernel_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local, "_ephemeral_low", lambda: PORT_FLOOR + 1)
    ports = find_free_ports(3)
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)
    _bind_all(ports)


def test_a_bad_count_is_refused() -> None:
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        find_free_ports(0)
