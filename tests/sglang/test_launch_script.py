"""cluster/sglang-launch.sh against the SGLang it names: every flag it passes parses with SGLang's own
server argument parser, its extra config is one raylsm accepts, and the SGLang installed here (what
the adapter tests run against) is the version the Makefile pins and the script and docs state."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shlex
from pathlib import Path

from raylsm.sglang.extra_config import tier_config_from_extra

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "sglang-launch.sh"


def _pinned_sglang() -> str:
    (version,) = re.findall(r"^SGLANG_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    return version


def _launch_argv() -> list[str]:
    """The arguments the script execs sglang.launch_server with, its variables at their defaults."""
    text = SCRIPT.read_text()
    command = text[text.index("exec python -m sglang.launch_server"):].replace("\\\n", " ")
    command = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", command)
    assert "$" not in command, command  # every variable has a default
    words = shlex.split(command, comments=True)
    assert words[:4] == ["exec", "python", "-m", "sglang.launch_server"]
    return words[4:]


def test_the_launch_script_flags_parse_with_sglangs_own_parser():
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    argv = _launch_argv()
    args, unknown = parser.parse_known_args(argv)
    assert unknown == [], f"flags SGLang {_pinned_sglang()} does not know: {unknown}"
    assert args.hicache_storage_backend == "dynamic" and args.enable_hierarchical_cache
    extra = json.loads(args.hicache_storage_backend_extra_config)
    assert (extra["module_path"], extra["class_name"]) == ("raylsm.sglang.backend", "RayLSMStorage")
    config = tier_config_from_extra(extra)
    # raylsm's call deadline stays within SGLang's prefetch budget (docs/deploy.md, "Defaults")
    assert config.client.call_timeout_s <= extra["prefetch_timeout_base"] / 2


def test_the_sglang_here_is_the_pinned_and_documented_version():
    pinned = _pinned_sglang()
    assert importlib.metadata.version("sglang") == pinned
    assert f"SGLang {pinned} is the tested version" in SCRIPT.read_text()
    assert f"SGLang {pinned}" in (ROOT / "docs" / "deploy.md").read_text()
