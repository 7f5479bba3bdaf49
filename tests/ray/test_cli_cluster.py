"""`raylsm up|status|down` on a Ray cluster that raylsm did not start (issue 15, section 2).

A two-node cluster is started on this machine with `ray start` (a head and a worker, each offering
one `raylsm_shard` unit under its own disk label, on free ports, in a Ray temp dir of the test's
own), and the commands are driven through the command line in subprocesses, as an operator would.
They must find the cluster by --address and by this host's Ray node record, print what they did,
refuse to start a second head next to it, and leave both `ray start` nodes running after
`raylsm down`; an embedded head that `raylsm up` starts beside them (where this host is no Ray node)
is stopped by `raylsm down`, and nothing else is. Only the processes this module started are ever
signalled: each `ray start` runs in a session of its own, and teardown stops the members of those
sessions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
DISKS = ("node-a", "node-b")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def session_members(session_id: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id and not is_zombie(int(entry)):
                    members.append(int(entry))
            except OSError:
                pass
    return members


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def executables(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                names.add(os.path.basename(cmdline.read().split(b"\0")[0].decode()))
        except OSError:
            pass
    return names


def stop_sessions(session_ids: list[int]) -> None:
    """SIGTERM, then SIGKILL, the members of the sessions this module's `ray start` calls led."""
    members = [pid for session_id in session_ids for pid in session_members(session_id)]
    for signum, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in members:
            try:
                os.kill(pid, signum)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            members = [pid for pid in members if not is_zombie(pid) and os.path.exists(f"/proc/{pid}")]
            if not members:
                return
            time.sleep(0.1)


class Cluster:
    def __init__(self, root: str):
        self.root = root
        self.ray_tmpdir = os.path.join(root, "t")  # short: Ray's socket paths live under it
        os.makedirs(self.ray_tmpdir)
        # RAY_TMPDIR keeps the nodes' record of this host's cluster (<tmp>/ray/ray_current_cluster)
        # away from other Ray instances on this machine; RAY_ADDRESS is unset so that the commands
        # find the cluster the way they would on a node. A fixed token for every process: the
        # cluster runs with authentication on, as Ray 2.60 clusters may.
        self.env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS",)}
        self.env.update(RAY_TMPDIR=self.ray_tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex,
                        RAY_USAGE_STATS_ENABLED="0")
        self.sessions: list[int] = []
        self.scratch: list[str] = [root]  # removed at teardown
        self.address = ""

    def start_node(self, disk: str, head: bool) -> None:
        command = [RAY, "start", f"--resources={{\"raylsm_shard\": 1}}", f"--labels=raylsm-disk={disk}",
                   "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
                   f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}"]
        if head:
            port = free_port()
            command += ["--head", f"--port={port}", "--include-dashboard=false",
                        f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"]
        else:
            command.append(f"--address={self.address}")
        starter = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True, text=True)
        self.sessions.append(starter.pid)
        output, _ = starter.communicate(timeout=120)
        assert starter.returncode == 0, output
        if head:
            with open(os.path.join(self.ray_tmpdir, "ray", "ray_current_cluster")) as record:
                self.address = record.read().strip()
            assert self.address.endswith(f":{port}"), self.address

    def raylsm(self, *argv: str, cwd: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raylsm.cli", *argv], env=env or self.env, cwd=cwd or self.root,
                              capture_output=True, text=True, timeout=180)

    def node_processes(self) -> list[set[str]]:
        """The executables alive in each node's session."""
        return [executables(session_members(session_id)) for session_id in self.sessions]


@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="rlc-", dir="/tmp")
    made = Cluster(root)
    try:
        made.start_node(DISKS[0], head=True)
        made.start_node(DISKS[1], head=False)
        yield made
    finally:
        stop_sessions(made.sessions)
        subprocess.run(["rm", "-rf", *made.scratch], check=False)


def test_up_without_address_on_a_ray_node_refuses_to_start_a_second_head(cluster):
    """The host is a node of a cluster raylsm did not start: `raylsm up` names it and asks for the
    shards' directory instead of starting an embedded head (which would also have moved what
    "auto" means here)."""
    workdir = os.path.join(cluster.root, "cwd")
    os.makedirs(workdir)
    done = cluster.raylsm("up", "--no-wait", cwd=workdir)
    assert done.returncode == 2, done.stderr
    assert f"Ray at {cluster.address}" in done.stderr and "--data-dir" in done.stderr, done.stderr
    assert not os.path.exists(os.path.join(workdir, ".raylsm")), "an embedded head was started"

    before = cluster.raylsm("status")
    assert before.returncode == 1
    assert f"Ray at {cluster.address}" in before.stderr and "no raylsm controller" in before.stderr, before.stderr


def test_up_status_down_by_address_leave_ray_running(cluster):
    data_dir = os.path.join(cluster.root, "data")
    up = cluster.raylsm("up", "--address", cluster.address, "--data-dir", data_dir, "--capacity-gb", "0.05",
                        "--segment-mb", "8")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"raylsm is up on Ray at {cluster.address} (--address)" in up.stdout, up.stdout
    assert "2 shard(s)" in up.stdout, up.stdout
    for disk in DISKS:
        assert f"shard-{disk}-0" in up.stdout, up.stdout
        assert os.path.isdir(os.path.join(data_dir, f"shard-{disk}-0"))

    status = cluster.raylsm("status", "--address", cluster.address)
    assert status.returncode == 0, status.stderr
    assert f"raylsm on Ray at {cluster.address} (--address)" in status.stdout, status.stdout
    assert status.stdout.count("serving") == 2, status.stdout

    found = cluster.raylsm("status")  # no --address: the cluster this host's Ray node belongs to
    assert found.returncode == 0, found.stderr
    assert f"Ray at {cluster.address} (the cluster this host's Ray node belongs to)" in found.stdout, found.stdout

    # `raylsm scale` (docs/elastic.md): in to one shard (drained, then standby), and out again.
    smaller = cluster.raylsm("scale", "--shards", "1", "--wait", "120")
    assert smaller.returncode == 0, smaller.stdout + smaller.stderr
    assert "the ring has 1 shards" in smaller.stdout and "scale: target 1 shards" in smaller.stdout, smaller.stdout
    status = cluster.raylsm("status")
    assert status.stdout.count("serving") == 1 and "standby shard-" in status.stdout, status.stdout
    assert "scale event" in status.stdout and "scale_in" in status.stdout, status.stdout
    larger = cluster.raylsm("scale", "--shards", "2", "--wait", "120")
    assert larger.returncode == 0 and "the ring has 2 shards" in larger.stdout, larger.stdout + larger.stderr
    refused = cluster.raylsm("scale", "--shards", "0")
    assert refused.returncode == 2 and "--shards" in refused.stderr, refused.stderr

    down = cluster.raylsm("down", "--address", cluster.address)
    assert down.returncode == 0, down.stderr
    assert f"raylsm is down on Ray at {cluster.address}: 2 shard(s) closed" in down.stdout, down.stdout
    assert "Ray is still running (raylsm did not start it)" in down.stdout, down.stdout

    for alive in cluster.node_processes():  # both `ray start` nodes: raylet and, on the head, GCS
        assert "raylet" in alive, cluster.node_processes()
    assert "gcs_server" in cluster.node_processes()[0]
    after = cluster.raylsm("status", "--address", cluster.address)
    assert after.returncode == 1 and "no raylsm controller" in after.stderr, after.stdout + after.stderr
    again = cluster.raylsm("down", "--address", cluster.address)
    assert again.returncode == 0 and "no raylsm controller" in again.stdout, again.stdout + again.stderr
    assert all("raylet" in alive for alive in cluster.node_processes())


def test_down_stops_the_embedded_head_it_started_and_nothing_else(cluster):
    """Where this host is no Ray node (another RAY_TMPDIR: no record of the cluster), `raylsm up`
    starts an embedded head; `raylsm down` stops that head's processes, and the two `ray start` nodes
    beside it keep running (the old `ray stop --force` took them all)."""
    workdir = os.path.join(cluster.root, "embedded")
    os.makedirs(workdir)
    env = dict(cluster.env, RAY_TMPDIR=os.path.join(cluster.root, "e"))
    os.makedirs(env["RAY_TMPDIR"])
    up = cluster.raylsm("up", "--shards", "1", "--segment-mb", "8", "--capacity-gb", "0.05", cwd=workdir, env=env)
    marker_path = os.path.join(workdir, ".raylsm", "embedded-ray.json")
    if os.path.exists(marker_path):
        with open(marker_path) as marker:
            record = json.load(marker)
        cluster.sessions.append(record["session_id"])  # teardown stops it if the test fails
        cluster.scratch.append(record["temp_dir"])  # the embedded head's Ray temp dir (its logs)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"raylsm is up on an embedded local Ray head at {record['address']}" in up.stdout, up.stdout
    assert "shard-local-0" in up.stdout
    assert "raylet" in executables(session_members(record["session_id"]))

    down = cluster.raylsm("down", cwd=workdir, env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"raylsm is down on Ray at {record['address']}: 1 shard(s) closed" in down.stdout, down.stdout
    assert "stopped the embedded Ray head `raylsm up` started" in down.stdout, down.stdout
    assert not session_members(record["session_id"]), executables(session_members(record["session_id"]))
    assert not os.path.exists(marker_path)
    for alive in cluster.node_processes()[:2]:
        assert "raylet" in alive, cluster.node_processes()
