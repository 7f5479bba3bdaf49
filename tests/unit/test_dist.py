"""The wheel `make dist` builds (docs/install.md: the one way raylsm gets onto Ray nodes, which the
cluster files and the Dockerfile install): built here from a copy of the project's sources, as pip
builds it, and checked for what a node needs: every package module, the packaged trace, the
`raylsm` command, the runtime dependencies, and nothing of the tests."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "raylsm", source / "raylsm", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    # --no-build-isolation: the test venv's setuptools (the build-system requirement), no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, cwd=source)
    (built,) = out.glob("raylsm-*.whl")
    return built


def test_the_wheel_holds_every_module_the_packaged_trace_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "raylsm").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "raylsm/data/conversation_trace.jsonl" in names  # `raylsm bench trace` without --trace
    assert not [name for name in names if name.startswith("tests/")]
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "raylsm = raylsm.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_wheel_declares_the_version_and_dependencies_of_pyproject(wheel):
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    archive = zipfile.ZipFile(wheel)
    (metadata_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(archive.read(metadata_name))
    assert metadata["Version"] == project["version"] and wheel.name.startswith(f"raylsm-{project['version']}-")
    required = metadata.get_all("Requires-Dist")
    plain = [requirement for requirement in required if "extra ==" not in requirement]
    assert sorted(plain) == sorted(project["dependencies"])
    # The `ray` extra (Ray for a host that has none; Ray images and nodes have it): declared.
    assert any(requirement.startswith("ray[default]") and 'extra == "ray"' in requirement for requirement in required)
