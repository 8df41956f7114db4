"""A node its peers declared dead while it trains re-joins instead of training apart.

Real torch rendezvous (the dynamic c10d handler, as our agents use it) on a real TCPStore:
two nodes form a world; their heartbeats stall past ``keep_alive_interval x
keep_alive_max_attempt`` (as a CPU-throttled pod's or a loaded machine's do); a third node
joining then drops both and opens a round of its own. torch's count of waiting nodes stays
0 for the old world, so its agents would never restart and the job would train on in two
worlds (seen once in the elastic test). With :func:`rejoin_when_dropped` the dropped node
counts itself as waiting, and re-joining forms one world with the new node.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import registry as rdzv_registry

from trainscale.trainer.contract.environment import TORCH_DISABLE_SHARE_RDZV_TCP_STORE
from trainscale.trainer.launch.agent import rejoin_when_dropped
from trainscale.trainer.launch.local import find_free_port

pytestmark = pytest.mark.slow

KEEP_ALIVE_SECONDS, KEEP_ALIVE_ATTEMPTS = 1, 2  # a node silent for 2 s is dead to its peers


def _handler(port: int) -> Any:
    params = RendezvousParameters(
        backend="c10d",
        endpoint=f"127.0.0.1:{port}",
        run_id="split",
        min_nodes=2,
        max_nodes=3,
        is_host="false",
        last_call_timeout=1,
        join_timeout=60,
        keep_alive_interval=KEEP_ALIVE_SECONDS,
        keep_alive_max_attempt=KEEP_ALIVE_ATTEMPTS,
    )
    return rdzv_registry.get_rendezvous_handler(params)


def _join(handler: Any, out: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = handler.next_rendezvous()
        except Exception as exc:  # reported by the assertions below
            out[key] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _until(predicate: Any, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_node_dropped_for_late_heartbeats_rejoins_with_the_new_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as our agents run (trainscale.trainer.launch.local, the operator's pods)
    monkeypatch.setenv(TORCH_DISABLE_SHARE_RDZV_TCP_STORE, "1")
    port = find_free_port()
    store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    a, b, c = _handler(port), _handler(port), _handler(port)
    joined: dict[str, Any] = {}
    try:
        for thread in [_join(a, joined, "a"), _join(b, joined, "b")]:
            thread.join(60)
        assert {joined["a"].world_size, joined["b"].world_size} == {2}, joined
        assert rejoin_when_dropped(a)
        assert rejoin_when_dropped(a)  # installed once
        assert a.num_nodes_waiting() == 0  # a healthy world: nothing to do

        # Both nodes stall past their keep-alive; a third node joins.
        a._stop_heartbeats()
        b._stop_heartbeats()
        time.sleep(KEEP_ALIVE_SECONDS * KEEP_ALIVE_ATTEMPTS + 1.0)
        joining = _join(c, joined, "c")

        # The new node dropped both and waits in a round of its own. torch's own count for
        # the old world says nobody waits: B's agent would train on, apart.
        assert _until(lambda: a.num_nodes_waiting() >= 1), "the dropped node never noticed"
        assert b.num_nodes_waiting() == 0
        assert joining.is_alive()

        # Re-joining (what the agent does when a node waits) forms one world with it.
        rejoining = _join(a, joined, "a2")
        joining.join(60)
        rejoining.join(60)
        assert not isinstance(joined["c"], Exception), joined["c"]
        assert not isinstance(joined["a2"], Exception), joined["a2"]
        assert (joined["c"].world_size, joined["a2"].world_size) == (2, 2)
        assert {joined["c"].rank, joined["a2"].rank} == {0, 1}
        assert a.num_nodes_waiting() == 0  # a member again
    finally:
        for handler in (a, b, c):
            handler._stop_heartbeats()
        del store
