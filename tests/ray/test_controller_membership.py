"""The controller's membership logic against a fake cluster (no Ray started): shards named after
their disk, a disk that comes back on a new node incarnation, two nodes claiming one disk, and a
node that leaves for good. The same paths run on a real simulated cluster in test_ray_tier_cluster."""

from __future__ import annotations

from dataclasses import dataclass, field

from raylsm.actors.placement import disk_identity, shard_name
from raylsm.config import TierConfig
from raylsm.controller.controller import SERVING, Controller
from raylsm.controller.ray_api import ShardSlot


@dataclass
class FakeCluster:
    """Alive nodes as node id -> labels, each offering one shard unit; records what the controller did."""

    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    started: list[tuple[str, str]] = field(default_factory=list)  # (shard, node id)
    killed: list[str] = field(default_factory=list)  # handles

    def shard_slots(self, resource_name: str, disk_label: str) -> list[ShardSlot]:
        return [ShardSlot(shard_name(disk_identity(node_id, labels, disk_label), 0), node_id)
                for node_id, labels in self.nodes.items()]

    def alive_node_ids(self) -> set[str]:
        return set(self.nodes)

    def start_shard(self, slot: ShardSlot, config) -> str:
        self.started.append((slot.name, slot.node_id))
        return f"handle:{slot.name}@{slot.node_id}"

    def ping_all(self, handles: dict[str, str], timeout_s: float) -> dict[str, str]:
        return {name: "ok" if handle.split("@")[1] in self.nodes else "silent" for name, handle in handles.items()}

    def kill(self, handle: str) -> None:
        self.killed.append(handle)

    def existing_shard(self, name):
        return None  # a fresh tier: no shard runs before the controller starts it

    def request_shards(self, count, resource_name):
        pass

    def call_all(self, handles: dict[str, str], method: str, timeout_s: float, *args) -> dict[str, dict]:
        return {name: {} for name in handles}


def _controller(cluster: FakeCluster) -> Controller:
    controller = Controller(TierConfig(), api=cluster)
    controller.reconcile_once()
    return controller


def test_a_shard_is_named_after_its_disk_label_else_its_node_id():
    cluster = FakeCluster({"a" * 56: {"raylsm-disk": "nvme-17"}, "b" * 56: {}, "c" * 56: {"raylsm-disk": "no/slash"}})
    ring = _controller(cluster).ring()
    assert set(ring["shards"]) == {"shard-nvme-17-0", f"shard-{'b' * 12}-0", f"shard-{'c' * 12}-0"}


def test_a_disk_back_on_a_new_node_incarnation_moves_its_shard_under_the_same_name():
    cluster = FakeCluster({"old": {"raylsm-disk": "d1"}, "other": {"raylsm-disk": "d2"}})
    controller = _controller(cluster)
    before = controller.ring()
    assert before["shards"]["shard-d1-0"] == {"node_id": "old"}

    del cluster.nodes["old"]  # the node restarts: Ray gives it a new id, the disk is the same
    cluster.nodes["new"] = {"raylsm-disk": "d1"}
    controller.reconcile_once()
    after = controller.ring()
    assert set(after["shards"]) == set(before["shards"])  # same members: no page changes owner
    assert after["shards"]["shard-d1-0"] == {"node_id": "new"}
    assert after["version"] > before["version"]  # clients re-resolve the moved shard
    assert cluster.killed == ["handle:shard-d1-0@old"]
    assert cluster.started[-1] == ("shard-d1-0", "new")
    controller.reconcile_once()  # the moved shard answers its ping from the new node
    states = {entry["shard"]: (entry["node_id"], entry["state"]) for entry in controller.status()["shards"]}
    assert states == {"shard-d1-0": ("new", SERVING), "shard-d2-0": ("other", SERVING)}


def test_while_two_alive_nodes_claim_one_disk_the_shard_stays_where_it_runs():
    cluster = FakeCluster({"old": {"raylsm-disk": "d1"}})
    controller = _controller(cluster)
    started = list(cluster.started)
    for order in (["new", "old"], ["old", "new"]):  # whichever Ray lists first
        cluster.nodes = {node: {"raylsm-disk": "d1"} for node in order}  # old not yet declared dead
        controller.reconcile_once()
        assert controller.ring()["shards"]["shard-d1-0"] == {"node_id": "old"}
    assert cluster.started == started and cluster.killed == []

    cluster.nodes = {"new": {"raylsm-disk": "d1"}}  # now Ray has declared the old one dead
    controller.reconcile_once()
    assert controller.ring()["shards"]["shard-d1-0"] == {"node_id": "new"}


def test_a_node_that_leaves_for_good_takes_its_shard_out_of_the_ring():
    cluster = FakeCluster({"n1": {"raylsm-disk": "d1"}, "n2": {"raylsm-disk": "d2"}})
    controller = _controller(cluster)
    before = controller.ring()
    del cluster.nodes["n2"]
    controller.reconcile_once()
    after = controller.ring()
    assert set(after["shards"]) == {"shard-d1-0"}
    assert after["version"] > before["version"]
