"""Starting and stopping what the end-to-end check runs against: the raylsm tier and SGLang servers.

Owned here: the SGLang launch line (`launch_args`, every flag checked against SGLang 0.5.23's own
argument parser by tests/e2e/test_sglang_e2e.py), the HiCache extra config of each L3 backend,
the server's process (its own session, so that stopping it stops its scheduler and detokenizer
children too; its process group id written to a file the shell script's exit trap reads), and
the raylsm tier's lifecycle through the `raylsm up` / `raylsm down` commands, run from the work
directory so that the embedded Ray head they start and stop is this run's alone.

Called by sglang_e2e.py on the GPU machine. Not thread-safe; one server at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from e2e_errors import E2EError, HostNotFreshError

SGLANG_VERSION = "0.5.23"
# raylsm as SGLang's `dynamic` backend (docs/deploy.md, section 3). SGLang strips
# hicache_storage_pass_prefix_keys (a JSON bool) before the backend sees the rest.
RAYLSM_EXTRA_CONFIG = {
    "backend_name": "raylsm",
    "module_path": "raylsm.sglang.backend",
    "class_name": "RayLSMStorage",
    "interface_v1": 1,
    "hicache_storage_pass_prefix_keys": True,
}
BACKEND_FLAG = {"raylsm": "dynamic", "file": "file"}
# HiCacheFile takes its directory from this variable first, then extra_config["file_storage_path"]
# (sglang/srt/mem_cache/hicache_storage.py, HiCacheFile.__init__): both are set to the work dir.
FILE_DIR_ENV = "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"
EMBEDDED_MARKER = Path(".raylsm") / "embedded-ray.json"  # raylsm.lifecycle.EMBEDDED_MARKER, under cwd
# Ray's token authentication (Ray 2.60): a head started on a machine that holds a token
# (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) requires it from every driver, and Ray
# sends it on its own only for an "auto" join. raylsm's commands turn it on for their explicit joins
# (raylsm.lifecycle.enable_local_token_auth); SGLang's process joins through RayLSMStorage with the
# explicit address of the extra config, so the server gets RAY_AUTH_MODE=token under the same rule.
# (Measured on the dev machine, which holds a token: without it, ray.init in the backend fails with
# "ConnectionError: Failed to connect to Ray cluster at <address>".)
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TIER_FILE = "tier.up"  # in the work dir while this run's tier is up (the exit trap's cue to take it down)
SERVER_PGID_FILE = "server.pgid"  # in the work dir while a server runs (the exit trap kills that group)


@dataclass(frozen=True)
class ServerPlan:
    """One SGLang server: which model, which L3 backend, and the sizes that make L3 matter."""

    model_dir: str
    backend: str  # "raylsm" or "file"
    port: int
    ray_address: str = "auto"  # raylsm: the tier's Ray head
    file_dir: Optional[str] = None  # file: its directory
    page_size: int = 64  # SGLang's HiCache tests use 64
    hicache_size_gb: int = 1  # host pool (L2); an integer number of GB in SGLang 0.5.23
    # Caps the GPU pool (L1): without it an H200 holds every token of the load in L1 and L3 is never read.
    max_total_tokens: int = 20480
    # wait_complete: a request waits for its whole L3 prefetch (SGLang's own harness uses it), so
    # cached_tokens measures what L3 holds and TTFT carries what reading it costs.
    prefetch_policy: str = "wait_complete"
    attention_backend: Optional[str] = None  # None: SGLang's choice (fa3 on Hopper under determinism)
    deterministic: bool = True  # --enable-deterministic-inference: a cached prefix gives the same ids
    disable_cuda_graph: bool = True  # faster start; the check measures prefill, not decode
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def extra_config(plan: ServerPlan) -> dict:
    """The --hicache-storage-backend-extra-config of a plan, as a dict."""
    if plan.backend == "raylsm":
        return {**RAYLSM_EXTRA_CONFIG, "ray_address": plan.ray_address}
    if plan.backend == "file":
        if not plan.file_dir:
            raise E2EError("the file backend needs a directory (ServerPlan.file_dir)")
        return {"hicache_storage_pass_prefix_keys": True, "file_storage_path": plan.file_dir}
    raise E2EError(f"unknown L3 backend {plan.backend!r}; expected one of {sorted(BACKEND_FLAG)}")


def launch_args(plan: ServerPlan) -> list[str]:
    """The arguments after `python -m sglang.launch_server` (flags as SGLang 0.5.23 spells them:
    `--tp-size`, not `--tp`; CUDA graphs are disabled per phase, `--disable-cuda-graph` is deprecated)."""
    args = [
        "--model-path", plan.model_dir,
        "--load-format", "dummy",
        "--skip-tokenizer-init",
        "--host", plan.host,
        "--port", str(plan.port),
        "--tp-size", "1",
        "--page-size", str(plan.page_size),
        "--max-total-tokens", str(plan.max_total_tokens),
        "--enable-hierarchical-cache",
        "--hicache-size", str(plan.hicache_size_gb),
        "--hicache-storage-backend", BACKEND_FLAG.get(plan.backend, plan.backend),
        "--hicache-storage-backend-extra-config", json.dumps(extra_config(plan)),
        "--hicache-storage-prefetch-policy", plan.prefetch_policy,
        "--enable-cache-report",
        "--enable-metrics",
    ]
    if plan.deterministic:
        args.append("--enable-deterministic-inference")
    if plan.attention_backend:
        args += ["--attention-backend", plan.attention_backend]
    if plan.disable_cuda_graph:
        args += ["--cuda-graph-backend-decode", "disabled", "--cuda-graph-backend-prefill", "disabled"]
    return args + list(plan.extra_args)


def ray_token_available(env: dict[str, str]) -> bool:
    """Whether Ray would find an authentication token for a process with this environment."""
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).is_file() and Path(path).stat().st_size > 0
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return (home / ".ray" / "auth_token").is_file()


def server_env(plan: ServerPlan, base: dict[str, str]) -> dict[str, str]:
    """The server's environment: the caller's, with the file backend's directory forced to the
    plan's (a value inherited from the caller would win over the extra config), and, for raylsm,
    Ray's token authentication on when a token is available and RAY_AUTH_MODE does not say otherwise."""
    env = dict(base)
    env.pop(FILE_DIR_ENV, None)
    if plan.backend == "file" and plan.file_dir:
        env[FILE_DIR_ENV] = plan.file_dir
    if plan.backend == "raylsm" and AUTH_MODE_ENV not in env and ray_token_available(env):
        env[AUTH_MODE_ENV] = "token"
    return env


# Builds raylsm's backend the way `--hicache-storage-backend dynamic` does (StorageBackendFactory,
# `cls(storage_config, kwargs)`), which joins the tier, then closes it: a clear error before any
# server starts. HiCacheStorageConfig's required fields change between SGLang versions: only the
# ones it has are passed.
ATTACH_PROBE = """
import dataclasses, json, sys
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
values = dict(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
              enable_storage_metrics=False, is_page_first_layout=True, model_name="raylsm-e2e-attach-probe",
              extra_config=json.loads(sys.argv[1]))
names = {field.name for field in dataclasses.fields(HiCacheStorageConfig)}
backend = StorageBackendFactory.create_backend("dynamic", HiCacheStorageConfig(
    **{name: value for name, value in values.items() if name in names}), None)
print("attached", type(backend).__name__)
backend.close()
"""


def probe_attach(plan: ServerPlan, python: str, timeout_s: float, log_path: Path) -> None:
    """Attach raylsm's backend as the server will (same interpreter, extra config and environment)
    and close it again; E2EError with the tail of its output if that fails."""
    command = [python, "-c", ATTACH_PROBE, json.dumps(extra_config(plan))]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False,
                                env=server_env(plan, dict(os.environ)))
    except subprocess.TimeoutExpired as error:
        raise E2EError(f"attaching raylsm's backend took over {timeout_s:.0f} s") from error
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(b"$ attach probe\n" + result.stdout + result.stderr)
    if result.returncode != 0:
        raise E2EError(f"SGLang's StorageBackendFactory could not attach raylsm at {plan.ray_address} "
                       f"(status {result.returncode}):\n{result.stderr.decode(errors='replace')[-1500:]}")


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - chars))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class ServerProcess:
    """`python -m sglang.launch_server` in a session of its own, logging to `log_path`; a context
    manager that stops the whole process group on exit."""

    def __init__(self, plan: ServerPlan, python: str, log_path: Path, work_dir: Path):
        self.plan = plan
        self.command = [python, "-m", "sglang.launch_server", *launch_args(plan)]
        self.log_path = Path(log_path)
        self.pgid_file = Path(work_dir) / SERVER_PGID_FILE
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(self.command) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env=server_env(self.plan, dict(os.environ)))
        self.pgid_file.write_text(str(self.process.pid))

    def exited(self) -> Optional[str]:
        """None while the server runs; once it has exited, a message with its status and log tail."""
        if self.process is None or self.process.poll() is None:
            return None
        return (f"SGLang server on port {self.plan.port} exited with status {self.process.returncode}; "
                f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after `grace_s`."""
        if self.process is None:
            return
        pgid = self.process.pid  # a session leader's pid is its process group id
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.2)
                self.process.poll()
            if not _group_alive(pgid):
                break
        self.process.poll()
        self.pgid_file.unlink(missing_ok=True)

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---- the raylsm tier -------------------------------------------------------------------------------

def raylsm_up_args(data_dir: str, shards: int, capacity_gb: float, segment_mb: int) -> list[str]:
    """`raylsm up` for this run's embedded tier (flags of raylsm/cli.py; checked by the CPU tests)."""
    return ["up", "--shards", str(shards), "--data-dir", data_dir, "--capacity-gb", f"{capacity_gb:g}",
            "--segment-mb", str(segment_mb)]


class RaylsmTier:
    """This run's raylsm tier: an embedded Ray head and its shards, started and stopped with the
    `raylsm` command from `work_dir` (where `raylsm up` records the head it started)."""

    # Prints the address of the Ray cluster `raylsm up` would join from a fresh directory, if any.
    FIND_CLUSTER = ("from raylsm import lifecycle\n"
                    "cluster = lifecycle.find_cluster()\n"
                    "print(cluster.address if cluster else '')\n")

    def __init__(self, python: str, work_dir: Path, data_dir: Path, log_dir: Path, shards: int = 2,
                 capacity_gb: float = 8.0, segment_mb: int = 64):
        self.python = python
        self.work_dir = Path(work_dir)
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_dir) / "raylsm.log"
        self.shards, self.capacity_gb, self.segment_mb = shards, capacity_gb, segment_mb
        self.address: Optional[str] = None

    def isolated_env(self) -> dict[str, str]:
        """The environment of `raylsm up` and `raylsm down`: no RAY_ADDRESS, and a Ray temp dir of
        this run's, in which no host cluster is recorded. Then the only cluster they can find is the
        embedded head `raylsm up` starts from the work dir, and `raylsm down` (which, when that head
        does not answer, falls back to the cluster of this host's Ray node) can never reach a tier that
        someone else started on this machine after the run's check_host_is_fresh."""
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = str(self.work_dir / "ray-tmp")
        return env

    def _run(self, args: list[str], timeout_s: float, what: str, isolated: bool = True) -> subprocess.CompletedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(args) + "\n").encode())
            log.flush()
            try:
                return subprocess.run(args, cwd=self.work_dir, stdout=subprocess.PIPE, stderr=log,
                                      stdin=subprocess.DEVNULL, timeout=timeout_s, check=False,
                                      env=self.isolated_env() if isolated else None)
            except subprocess.TimeoutExpired as error:
                raise E2EError(f"{what} did not finish within {timeout_s:.0f} s (log {self.log_path})") from error

    def check_host_is_fresh(self, timeout_s: float = 60.0) -> None:
        """HostNotFreshError if this host is already a Ray node (or RAY_ADDRESS names a cluster):
        `raylsm up` would join that cluster instead of starting a head of its own."""
        result = self._run([self.python, "-c", self.FIND_CLUSTER], timeout_s, "looking for a Ray cluster",
                           isolated=False)
        found = result.stdout.decode().strip()
        if result.returncode != 0:
            raise E2EError(f"could not check for a Ray cluster on this host (status {result.returncode}; "
                           f"log {self.log_path})")
        if found:
            raise HostNotFreshError(f"this host already belongs to the Ray cluster at {found}; the check starts "
                                    "a tier of its own on an embedded Ray head: run it where no Ray runs "
                                    "(and RAY_ADDRESS is unset)")

    def up(self, timeout_s: float) -> str:
        """Start the tier; return the Ray address SGLang's backend must join."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = raylsm_up_args(str(self.data_dir), self.shards, self.capacity_gb, self.segment_mb)
        (self.work_dir / TIER_FILE).write_text("starting\n")  # from here on the exit trap runs `raylsm down`
        result = self._run([self.python, "-m", "raylsm.cli", *args], timeout_s, "raylsm up")
        with open(self.log_path, "ab") as log:
            log.write(result.stdout)
        if result.returncode != 0:
            raise E2EError(f"raylsm up failed with status {result.returncode} (log {self.log_path})")
        marker = self.work_dir / EMBEDDED_MARKER
        try:
            self.address = json.loads(marker.read_text())["address"]
        except (OSError, ValueError, KeyError) as error:
            raise E2EError(f"raylsm up did not start an embedded Ray head (no address in {marker})") from error
        (self.work_dir / TIER_FILE).write_text(self.address + "\n")
        return self.address

    def down(self, timeout_s: float = 120.0) -> int:
        """Stop the shards, the controller and the embedded head; return `raylsm down`'s status."""
        result = self._run([self.python, "-m", "raylsm.cli", "down"], timeout_s, "raylsm down")
        with open(self.log_path, "ab") as log:
            log.write(result.stdout)
        if result.returncode == 0:
            (self.work_dir / TIER_FILE).unlink(missing_ok=True)
        return result.returncode
