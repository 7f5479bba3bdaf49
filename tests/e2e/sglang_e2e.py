"""The real-SGLang end-to-end check of raylsm: the driver that `make e2e` runs on a GPU machine.

Owned here: the plan of the run, its time budget, and e2e.json. A full run (tests/e2e/sglang_server.sh
runs it inside a venv holding SGLang 0.5.23 with its CUDA stack and raylsm from the checkout):

1. preflight: the interpreter sees a CUDA device, SGLang and Ray (versions into e2e.json), and the host
   is not already a Ray node;
2. writes two model directories (e2e_models: an MHA Llama, an MLA DeepSeek-V2; random weights);
3. `raylsm up` (an embedded Ray head with 2 shards, data under the work dir), then raylsm's backend
   attached once through SGLang's StorageBackendFactory outside any server (a clear error early);
4. three SGLang servers, one after another (e2e_server): the MHA model on raylsm (L3 check, then the
   multi-turn load), the MLA model on raylsm (L3 check), the MHA model on SGLang's `file` backend
   (the same L3 check as a control, not gating; then the same load, for comparison);
5. `raylsm down`; e2e.json under --out; exit status 0 only if both raylsm checks pass, both loads ran
   without a failed request, and no phase failed.

`--attach URL` runs the L3 check and the load against a server that is already up (no tier, no
launch); the CPU tests use it with a fake server. Every phase has a timeout, all of them within
--budget-s (the shell script passes what is left of E2E_BUDGET_S, default 600 s for the whole run).
Errors of a phase are recorded in e2e.json and the next phase runs, except when the budget is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the e2e_* modules, when run as a script

from e2e_errors import BudgetExceededError, E2EError  # noqa: E402
from e2e_http import SGLangClient  # noqa: E402
from e2e_l3_check import CheckConfig, run_l3_check  # noqa: E402
from e2e_load import LoadConfig, run_multiturn  # noqa: E402
from e2e_models import DEEPSEEK_MLA, LLAMA_MHA, MODELS, ModelSpec, write_model_dir  # noqa: E402
from e2e_server import SGLANG_VERSION, RaylsmTier, ServerPlan, ServerProcess, probe_attach  # noqa: E402

DEFAULT_OUT = "./.raylsm/e2e"
SERVER_START_TIMEOUT_S = 300.0  # imports, dummy weights, the Ray connection; CUDA graphs are off
TIER_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Phase:
    """One server of the run and what runs against it."""

    name: str
    model: ModelSpec
    backend: str  # "raylsm" or "file"
    check: bool
    gating: bool  # does the check's verdict decide the exit status
    load: bool


PHASES = (
    Phase("mha-raylsm", LLAMA_MHA, "raylsm", check=True, gating=True, load=True),
    Phase("mla-raylsm", DEEPSEEK_MLA, "raylsm", check=True, gating=True, load=False),
    Phase("mha-file", LLAMA_MHA, "file", check=True, gating=False, load=True),
)
LOAD_BACKENDS = ("raylsm", "file")


class Budget:
    """The seconds left to the run; `cap` bounds a phase's timeout by them."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, timeout_s: float, what: str) -> float:
        left = self.left()
        if left <= 1.0:
            raise BudgetExceededError(f"no time left for {what} (the run's budget is spent)")
        return min(timeout_s, left)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PREFLIGHT = """
import json, torch, sglang, ray
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "sglang": sglang.__version__, "ray": ray.__version__}))
"""


def preflight(python: str, timeout_s: float) -> dict[str, Any]:
    """Versions and the GPU the server's interpreter sees; E2EError if it sees no CUDA device."""
    try:
        result = subprocess.run([python, "-c", PREFLIGHT], capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise E2EError(f"preflight: {python} took over {timeout_s:.0f} s to import torch, sglang and ray") from error
    if result.returncode != 0:
        raise E2EError(f"preflight: {python} cannot import torch, sglang and ray:\n"
                       f"{result.stderr.decode(errors='replace')[-2000:]}")
    found = json.loads(result.stdout.decode().strip().splitlines()[-1])
    if not found["cuda"]:
        raise E2EError(f"preflight: torch {found['torch']} sees no CUDA device; the check needs a GPU "
                       "(was a CPU torch installed over SGLang's? install raylsm without the `sglang` extra)")
    if found["sglang"] != SGLANG_VERSION:
        found["warning"] = f"SGLang {found['sglang']} is not the tested {SGLANG_VERSION}"
    return found


def verdict(results: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passes)."""
    reasons = [f"{error['phase']}: {error['error']}" for error in results["errors"]]
    for label, check in results["checks"].items():
        if check.get("gating") and not check["pass"]:
            reasons += [f"{label}: {failure}" for failure in check["failures"]]
    for backend in results["expected_loads"]:
        load = results["load"].get(backend)
        if load is None:
            reasons.append(f"load on {backend}: did not run")
        elif load["errors"] or load["requests"] != load["expected_requests"]:
            reasons.append(f"load on {backend}: {load['errors']} failed requests, {load['requests']} of "
                           f"{load['expected_requests']} answered")
    return reasons


def compare_loads(load: dict[str, Any]) -> Optional[dict[str, Any]]:
    raylsm, file = load.get("raylsm"), load.get("file")
    if not raylsm or not file or not raylsm["ttft_s"]["p50"] or not file["ttft_s"]["p50"]:
        return None
    return {"ttft_p50_raylsm_over_file": round(raylsm["ttft_s"]["p50"] / file["ttft_s"]["p50"], 4),
            "ttft_mean_raylsm_over_file": round(raylsm["ttft_s"]["mean"] / file["ttft_s"]["mean"], 4),
            "hit_rate_raylsm_minus_file": round((raylsm["hit_rate"] or 0) - (file["hit_rate"] or 0), 6)}


def write_results(results: dict[str, Any], out: Path, started: float) -> Path:
    """Add the verdict to `results` and write them to out/e2e.json (atomically)."""
    results["comparison"] = compare_loads(results["load"])
    results["failures"] = verdict(results)
    results["pass"] = not results["failures"]
    results["duration_s"] = round(time.monotonic() - started, 3)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "e2e.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def run_phase_checks(client: SGLangClient, phase_name: str, model: ModelSpec, backend: str, do_check: bool,
                     gating: bool, do_load: bool, check_config: CheckConfig, load_config: LoadConfig,
                     budget: Budget, results: dict[str, Any]) -> None:
    """The L3 check and/or the load against one running server, recorded into `results`."""
    if do_check:
        label = f"{model.name}/{backend}"
        config = replace(check_config, vocab_size=model.vocab_size)
        record = run_l3_check(client, config, label,
                              backup_timeout_s=budget.cap(config.backup_timeout_s, f"{label} check"))
        record.update(phase=phase_name, model=model.name, attention=model.attention, backend=backend, gating=gating)
        results["checks"][label] = record
        print(f"[e2e] check {label}: {'PASS' if record['pass'] else 'FAIL'} cached_tokens={record['l3_cached_tokens']}"
              + "".join(f"\n[e2e]   {failure}" for failure in record["failures"]), flush=True)
    if do_load:
        client.flush_cache(budget.cap(check_config.flush_timeout_s, "flush before the load"),
                           retry_s=check_config.flush_retry_s)
        config = replace(load_config, vocab_size=model.vocab_size)
        summary = run_multiturn(client, config, f"{model.name}/{backend}",
                                timeout_s=budget.cap(config.timeout_s, f"load on {backend}"))
        summary.update(phase=phase_name, model=model.name)
        results["load"][backend] = summary
        print(f"[e2e] load {backend}: {summary['requests']} requests, hit rate {summary['hit_rate']}, "
              f"TTFT {summary['ttft_s']}", flush=True)


def run_attached(args: argparse.Namespace, budget: Budget, results: dict[str, Any], started: float) -> None:
    client = SGLangClient(args.attach, request_timeout_s=args.request_timeout_s)
    model = MODELS[args.attach_model]
    results["expected_loads"] = ["attached"] if not args.skip_load else []
    client.wait_healthy(budget.cap(args.start_timeout_s, "the attached server's health"), poll_s=0.25)
    run_phase_checks(client, "attached", model, "attached", True, True, not args.skip_load,
                     args.check_config, args.load_config, budget, results)


def run_full(args: argparse.Namespace, budget: Budget, results: dict[str, Any], started: float) -> None:
    out, work = Path(args.out), Path(args.work)
    logs = out / "logs"
    work.mkdir(parents=True, exist_ok=True)
    results["environment"] = preflight(args.python, budget.cap(180.0, "preflight"))
    models = {spec.name: write_model_dir(spec, work / "models") for spec in (LLAMA_MHA, DEEPSEEK_MLA)}
    tier = RaylsmTier(args.python, work, work / "raylsm-data", logs)
    tier.check_host_is_fresh(budget.cap(60.0, "the Ray cluster check"))
    results["tier"] = {"data_dir": str(tier.data_dir)}
    try:
        address = tier.up(budget.cap(TIER_TIMEOUT_S, "raylsm up"))
        results["tier"]["ray_address"] = address
        probe = ServerPlan(model_dir="", backend="raylsm", port=0, ray_address=address)
        probe_attach(probe, args.python, budget.cap(120.0, "the attach probe"), logs / "raylsm.log")
        for phase in PHASES:
            plan = ServerPlan(model_dir=str(models[phase.model.name]), backend=phase.backend, port=free_port(),
                              ray_address=address, file_dir=str(work / "hicache-file"),
                              attention_backend=args.attention_backend, deterministic=args.deterministic)
            phase_started = time.monotonic()
            try:
                with ServerProcess(plan, args.python, logs / f"server-{phase.name}.log", work) as server:
                    client = SGLangClient(plan.url, request_timeout_s=args.request_timeout_s)
                    ready_s = client.wait_healthy(budget.cap(args.start_timeout_s, f"{phase.name} start"),
                                                  server.exited)
                    results["servers"][phase.name] = {"command": server.command, "ready_s": round(ready_s, 1)}
                    print(f"[e2e] {phase.name}: server ready in {ready_s:.0f} s", flush=True)
                    run_phase_checks(client, phase.name, phase.model, phase.backend, phase.check, phase.gating,
                                     phase.load, args.check_config, args.load_config, budget, results)
            except BudgetExceededError:
                raise
            except E2EError as error:
                results["errors"].append({"phase": phase.name, "error": str(error)})
                print(f"[e2e] {phase.name} failed: {error}", flush=True)
            results["servers"].setdefault(phase.name, {})["phase_s"] = round(time.monotonic() - phase_started, 1)
            write_results(dict(results), out, started)  # progress, in case the run is killed
    finally:  # also past the budget: the tier must not outlive the run
        try:
            results["tier"]["down_status"] = tier.down(min(120.0, max(30.0, budget.left())))
        except E2EError as error:
            results["errors"].append({"phase": "raylsm down", "error": str(error)})


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", DEFAULT_OUT), help="where e2e.json and logs go")
    parser.add_argument("--work", default=None, help="scratch directory (default OUT/work); emptied by the script")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("E2E_BUDGET_S", 600)))
    parser.add_argument("--python", default=sys.executable, help="interpreter of the servers and `raylsm`")
    parser.add_argument("--attach", metavar="URL", help="check a running server instead (no tier, no launch)")
    parser.add_argument("--attach-model", choices=sorted(MODELS), default=LLAMA_MHA.name)
    parser.add_argument("--skip-load", action="store_true", help="with --attach: the L3 check only")
    parser.add_argument("--attention-backend", default=os.environ.get("RAYLSM_E2E_ATTENTION_BACKEND") or None)
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    parser.add_argument("--request-timeout-s", type=float, default=120.0)
    parser.add_argument("--start-timeout-s", type=float, default=SERVER_START_TIMEOUT_S,
                        help="the longest wait for a server's /health")
    parser.add_argument("--check", default="{}", help="JSON overrides of CheckConfig")
    parser.add_argument("--load", default="{}", help="JSON overrides of LoadConfig")
    args = parser.parse_args(argv)
    args.work = args.work or str(Path(args.out) / "work")
    try:
        args.check_config = CheckConfig(**json.loads(args.check))
        args.load_config = LoadConfig(**json.loads(args.load))
    except (TypeError, ValueError) as error:
        parser.error(f"--check/--load: {error}")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    # SIGTERM (the shell script's exit trap, `timeout`) and SIGINT unwind like Ctrl-C, so that the
    # server and the tier are stopped on the way out; set explicitly, as a background job of a
    # non-interactive shell starts with SIGINT ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    budget = Budget(args.budget_s)
    results: dict[str, Any] = {"sglang_version_tested": SGLANG_VERSION, "mode": "attach" if args.attach else "full",
                               "checks": {}, "load": {}, "servers": {}, "errors": [],
                               "expected_loads": list(LOAD_BACKENDS)}
    started = time.monotonic()
    try:
        (run_attached if args.attach else run_full)(args, budget, results, started)
    except E2EError as error:
        results["errors"].append({"phase": "run", "error": str(error)})
        print(f"[e2e] stopped: {error}", flush=True)
    except KeyboardInterrupt:
        results["errors"].append({"phase": "run", "error": "interrupted"})
        raise
    finally:
        path = write_results(results, Path(args.out), started)
    print(f"[e2e] {'PASS' if results['pass'] else 'FAIL'}: {path}"
          + "".join(f"\n[e2e]   {reason}" for reason in results["failures"]), flush=True)
    return 0 if results["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
