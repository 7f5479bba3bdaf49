"""Refreshes cluster/schemas/upstream/: the openAPIV3Schema of each CRD the cluster files use, taken
from the operator's own repository at a release tag.

Run by hand, never in CI (CI reaches PyPI and Debian only, not GitHub):

    python cluster/schemas/refresh_upstream.py                      # fetches each tag from GitHub
    python cluster/schemas/refresh_upstream.py --git-dir ray-project/kuberay=/path/to/kuberay/.git

`--git-dir owner/name=DIR` reads a repository from a local clone (bare or not) that has the tag,
instead of fetching it. To follow a new release, change its tag in SOURCES, run this, run
tests/unit/test_cluster_files.py, and update the versions named in cluster/schemas/upstream/README.md,
docs/install.md and docs/deploy.md.

Each output file is `<name>.json.gz`: gzip (no timestamp, so a rerun writes the same bytes) of sorted,
indented JSON, {"source": {...where it came from...}, "openAPIV3Schema": {...}}. The schema is the
upstream one with its `description` keywords removed (documentation only: nothing validates against
them) and nothing else changed. Read one with `zcat FILE | less`; compare two with
`diff <(zcat OLD) <(zcat NEW)`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

UPSTREAM = Path(__file__).resolve().parent / "upstream"

# (output name, repository, tag, path of the CRD in it, CRD version). KubeRay at both ends of what
# docs/install.md supports (1.5 or later): the oldest release and the newest.
SOURCES = [
    ("kuberay-v1.5.0-raycluster", "ray-project/kuberay", "v1.5.0",
     "ray-operator/config/crd/bases/ray.io_rayclusters.yaml", "v1"),
    ("kuberay-v1.7.0-raycluster", "ray-project/kuberay", "v1.7.0",
     "ray-operator/config/crd/bases/ray.io_rayclusters.yaml", "v1"),
    ("prometheus-operator-v0.93.0-podmonitor", "prometheus-operator/prometheus-operator", "v0.93.0",
     "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml", "v1"),
    ("prometheus-operator-v0.93.0-prometheusrule", "prometheus-operator/prometheus-operator", "v0.93.0",
     "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml", "v1"),
]
LICENSES = {"ray-project/kuberay": "Apache-2.0", "prometheus-operator/prometheus-operator": "Apache-2.0"}


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True,
                          text=True).stdout


def fetch_tag(repo: str, tag: str, into: str) -> str:
    """A bare repository under `into` holding `tag` of github.com/`repo` (shallow)."""
    git_dir = str(Path(into) / repo.replace("/", "+"))
    if not Path(git_dir).exists():
        subprocess.run(["git", "init", "--quiet", "--bare", git_dir], check=True)
    git(git_dir, "fetch", "--quiet", "--depth", "1", f"https://github.com/{repo}.git",
        f"refs/tags/{tag}:refs/tags/{tag}")
    return git_dir


def without_descriptions(schema):
    """The schema with every schema node's `description` removed (a property *named* description,
    under `properties`, is kept)."""
    if isinstance(schema, list):
        return [without_descriptions(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: without_descriptions(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = without_descriptions(value)
        else:
            out[key] = value  # default, enum, x-kubernetes-*: values, not schemas
    return out


def refresh(git_dirs: dict[str, str], workdir: str) -> None:
    UPSTREAM.mkdir(exist_ok=True)
    for name, repo, tag, path, version in SOURCES:
        git_dir = git_dirs.get(repo) or fetch_tag(repo, tag, workdir)
        commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
        crd = yaml.safe_load(git(git_dir, "show", f"{commit}:{path}"))
        (served,) = [entry for entry in crd["spec"]["versions"] if entry["name"] == version]
        document = {
            "source": {"repository": f"https://github.com/{repo}", "tag": tag, "commit": commit,
                       "path": path, "crd": crd["metadata"]["name"], "group": crd["spec"]["group"],
                       "kind": crd["spec"]["names"]["kind"], "version": version,
                       "license": LICENSES[repo], "changes": "description keywords removed; nothing else"},
            "openAPIV3Schema": without_descriptions(served["schema"]["openAPIV3Schema"]),
        }
        text = json.dumps(document, indent=1, sort_keys=True) + "\n"
        target = UPSTREAM / f"{name}.json.gz"
        with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            out.write(text.encode())
        print(f"{target.relative_to(UPSTREAM.parents[2])}: {repo} {tag} ({commit[:12]}), "
              f"{len(text)} bytes of JSON, {target.stat().st_size} gzipped")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", action="append", default=[], metavar="OWNER/NAME=DIR",
                        help="read this repository from a local clone that has the tags")
    args = parser.parse_args(argv)
    git_dirs = dict(entry.split("=", 1) for entry in args.git_dir)
    with tempfile.TemporaryDirectory() as workdir:
        refresh(git_dirs, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
