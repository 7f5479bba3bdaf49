"""Ray's own autoscaler on one machine for tests: `ray.cluster_utils.AutoscalingCluster` made to work
with Ray 2.60 and to share the machine. Imported by tests/ray/test_autoscaling.py, and by Ray's
autoscaler monitor (for `DiskLabelProvider`, through PYTHONPATH), so importing it starts nothing.

What the stock class lacks here (each found by running it, ray 2.60.0):
- its config template (`fake_multi_node/example.yaml`) is not in the wheel: the config is inlined
  and the fake provider loaded as an "external" module;
- it has no address (it expects port 6379) and `start()`/`shutdown()` run `ray stop --force`, which
  kills every Ray process on the machine: here a free port, a temp dir of its own, and a shutdown
  that kills only this cluster's processes;
- `ray start --head` turns token auth on when ~/.ray/auth_token exists, which an explicit-address
  `ray.init` then fails: auth is off for the cluster, and the driver must set RAY_AUTH_MODE=disabled
  while it is connected (tests/ray/test_autoscaling.py's fixture);
- fake node ids share their first 12 hex digits (raylsm names an unlabelled disk after them):
  `DiskLabelProvider` gives each node a label value of its own ("{node}" in a node type's label
  value becomes the node's number).

Ray's autoscaler v1 (the default) removes a node whose `raylsm_shard` actor was stopped once the
request no longer needs it, in about 4 s with idle_timeout_minutes 0.05.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import ray
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.cluster_utils import AutoscalingCluster

HERE = os.path.dirname(os.path.abspath(__file__))
PROVIDER = "autoscaling_cluster.DiskLabelProvider"


class DiskLabelProvider(FakeMultiNodeProvider):
    """The fake multi-node provider, with "{node}" in a label value replaced by the node's number."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        with self.lock:
            number = str(self._next_node_id + 1).zfill(5)
            labels = {key: value.replace("{node}", number) if isinstance(value, str) else value
                      for key, value in (labels or {}).items()}
            return super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class LocalAutoscalingCluster(AutoscalingCluster):
    """`AutoscalingCluster(head_resources, worker_node_types, idle_timeout_minutes=..., ...)` that
    starts on its own port (`address`) and stops only its own processes."""

    def __init__(self, head_resources: dict, worker_node_types: dict, **config) -> None:
        super().__init__(dict(head_resources), worker_node_types, **config)
        self.address: str | None = None
        self.temp_dir: str | None = None

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config):
        types = copy.deepcopy(worker_node_types)
        types["ray.head.default"] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        return {
            "cluster_name": "fake_multinode", "max_workers": 8, "head_node_type": "ray.head.default",
            "provider": {"type": "external", "module": PROVIDER, "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": types, "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
            "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], **config,
        }

    def start(self, **_ignored) -> None:
        port = _free_port()
        self.address = f"{ray._private.services.get_node_ip_address()}:{port}"
        self.temp_dir = tempfile.mkdtemp(prefix="rasc_", dir="/tmp")  # socket paths stay < 108 chars
        self._config["provider"]["gcs_address"] = self.address
        path = os.path.join(self.temp_dir, "autoscaling.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self._config, handle)
        head = dict(self._head_resources)
        command = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
                   f"--autoscaling-config={path}", f"--port={port}", f"--temp-dir={self.temp_dir}",
                   "--include-dashboard=false", "--ray-client-server-port", str(_free_port()),
                   "--dashboard-agent-listen-port", str(_free_port()), "--disable-usage-stats"]
        for key, flag in (("CPU", "--num-cpus"), ("object_store_memory", "--object-store-memory")):
            if key in head:
                command.append(f"{flag}={head.pop(key)}")
        if head:
            command.append(f"--resources={json.dumps(head)}")
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)}
        env.pop("RAY_enable_autoscaler_v2", None)
        subprocess.check_call(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ray._private.services.find_gcs_addresses.cache_clear()

    def shutdown(self, **_ignored) -> None:
        import shutil

        import psutil

        mine = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                line = " ".join(process.info["cmdline"] or [])
            except psutil.Error:
                continue
            if process.pid != os.getpid() and ((self.temp_dir and self.temp_dir in line)
                                               or (self.address and self.address in line)):
                mine.append(process)
        for process in mine:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(mine, timeout=10)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        ray._private.services.find_gcs_addresses.cache_clear()


def shard_nodes(resource: str = "raylsm_shard") -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"] and node["Resources"].get(resource)]


def wait_for_nodes(count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(shard_nodes()) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"wanted {count} shard nodes, have {len(shard_nodes())} after {timeout_s:.0f}s")
        time.sleep(0.2)
