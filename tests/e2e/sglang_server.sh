#!/usr/bin/env bash
# The real-SGLang end-to-end check of raylsm, on a GPU machine: `make e2e` (docs/e2e.md).
#
# Owns the environment and the cleanup; the check itself is tests/e2e/sglang_e2e.py. This script:
#   1. makes a venv under $OUT (default ./.raylsm/e2e) and installs SGLang 0.5.23 with its CUDA stack
#      (a normal pip install), then raylsm from this checkout with the `ray` extra only: the `sglang`
#      extra is the CPU torch of the CPU tests and would replace SGLang's CUDA torch;
#   2. runs the driver with what is left of the time budget (E2E_BUDGET_S, default 600 s in all);
#   3. on exit, whatever happened: kills the SGLang server's process group if the driver left one,
#      runs `raylsm down` if this run's tier is still up, and removes the work directory and the venv.
# Results stay in $OUT: e2e.json and logs/. Exit status: the driver's (non-zero if a check failed).
#
# Environment: OUT, E2E_BUDGET_S, PYTHON (the interpreter the venv is made from; default python3),
# E2E_PYTHON (an interpreter that already has SGLang and raylsm: no venv, no install),
# E2E_KEEP_VENV=1 (keep and reuse $OUT/venv), E2E_KEEP_WORK=1 (keep $OUT/work for inspection),
# RAYLSM_E2E_ATTENTION_BACKEND (e.g. triton on GPUs where SGLang's default is not fa3).
# pip honours its own variables (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX) for offline installs.
set -euo pipefail

SGLANG_VERSION=0.5.23
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-./.raylsm/e2e}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$OUT/work"
LOGS="$OUT/logs"
VENV="$OUT/venv"
BUDGET_S="${E2E_BUDGET_S:-600}"
START_S=$(date +%s)

remaining() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }
# Run a command within what is left of the budget (`timeout 0` would mean no limit at all).
within_budget() {
  local left
  left="$(remaining)"
  [ "$left" -gt 0 ] || return 124
  timeout --kill-after=30 "$left" "$@"
}

PY="${E2E_PYTHON:-$VENV/bin/python}"

DRIVER_PID=""

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    # Interrupted: SIGTERM, which `timeout` passes on, makes the driver stop its server and its tier.
    kill -TERM "$DRIVER_PID" 2>/dev/null || true
    for _ in $(seq 90); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$DRIVER_PID" 2>/dev/null || true
  fi
  if [ -s "$WORK/server.pgid" ]; then  # a server the driver could not stop (the driver was killed)
    local pgid
    pgid="$(cat "$WORK/server.pgid")"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  if [ -e "$WORK/tier.up" ] && [ -x "$PY" ]; then  # this run's tier is still up
    # Isolated as the driver runs it (e2e_server.RaylsmTier.isolated_env): only this run's head.
    (cd "$WORK" && env -u RAY_ADDRESS RAY_TMPDIR="$WORK/ray-tmp" timeout 120 "$PY" -m raylsm.cli down) \
      >>"$LOGS/raylsm.log" 2>&1 || true
  fi
  if [ "${E2E_KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi
  if [ -z "${E2E_PYTHON:-}" ] && [ "${E2E_KEEP_VENV:-0}" != 1 ]; then rm -rf "$VENV"; fi
  echo "sglang_server.sh: results in $OUT (e2e.json, logs/); exit status $status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$WORK"
mkdir -p "$WORK" "$LOGS"
rm -f "$OUT/e2e.json"

if [ -z "${E2E_PYTHON:-}" ]; then
  stamp="$VENV/.installed-sglang-$SGLANG_VERSION"
  if [ ! -e "$stamp" ]; then
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    echo "sglang_server.sh: installing sglang==$SGLANG_VERSION and raylsm into $VENV (log: $LOGS/pip.log)"
    # `ray` only, never the `sglang` extra here (its CPU torch would replace SGLang's CUDA torch).
    if ! { within_budget "$VENV/bin/pip" install --upgrade pip &&
           within_budget "$VENV/bin/pip" install "sglang==$SGLANG_VERSION" &&
           within_budget "$VENV/bin/pip" install -e "$ROOT[ray]"; } >"$LOGS/pip.log" 2>&1; then
      echo "sglang_server.sh: pip install failed or ran out of time (see $LOGS/pip.log)" >&2
      exit 1
    fi
    touch "$stamp"
  fi
fi

left="$(remaining)"
if [ "$left" -le 60 ]; then
  echo "sglang_server.sh: only ${left} s of the ${BUDGET_S} s budget left after the install; raise E2E_BUDGET_S" >&2
  exit 1
fi
# The driver keeps to the budget minus a margin for this script's cleanup; `timeout` is the backstop
# (a driver killed by it leaves server.pgid and tier.up, which the exit trap acts on).
timeout --kill-after=20 "$(( left - 10 ))" \
  "$PY" "$ROOT/tests/e2e/sglang_e2e.py" --out "$OUT" --work "$WORK" --python "$PY" --budget-s "$(( left - 40 ))" &
DRIVER_PID=$!
wait "$DRIVER_PID"
