"""The cluster files are accepted by the tools that read them, and every `raylsm` command the files
and docs show exists (issue 15, section 1).

- cluster/ray-cluster.yaml against the cluster launcher's own JSON schema, shipped in the installed
  Ray package (ray/autoscaler/ray-schema.json), and through the launcher's own config preparation and
  validation in a subprocess (this test tier forbids importing Ray in-process);
- cluster/kuberay-raycluster.yaml and cluster/prometheus-rules.yaml, each document twice over:
  against the CRD schemas of its kind as the operators publish them (cluster/schemas/upstream/:
  KubeRay 1.5.0 and 1.7.0's RayCluster, Prometheus Operator 0.93.0's PodMonitor and PrometheusRule),
  with what the API server adds to plain JSON Schema (fields a CRD does not declare are dropped, or
  refused by kubectl's strict field validation; list-maps keep their keys unique); and against the
  strict hand-written subsets in cluster/schemas/*.schema.yaml, for what the CRDs do not check: a
  closed list of the fields the files mean to use, each document's top-level metadata, and the
  enums and ranges of pod fields that the API server checks only when KubeRay creates the pods;
- the RayCluster, against the checks KubeRay makes when it admits one, and what raylsm needs of it:
  a per-node disk label, one kv pod per disk node, a disk the image's user can write;
- the pinned Ray, Python and SGLang versions agree across the Makefile, the Dockerfile and both
  cluster files, and the SGLang launch line keeps raylsm's call timeout inside SGLang's prefetch
  budget;
- every `raylsm ...` command line in cluster/*, docs/*.md, README.md, the Makefile and the Dockerfile
  names a command and flags that `raylsm.cli.build_parser()` has;
- the Grafana dashboard and the Prometheus rules query metrics, labels and label values that raylsm
  exports, and docs/deploy.md's metrics table lists exactly those metrics with their labels and
  values: the metric classes (raylsm/actors/metrics.py, raylsm/controller/metrics.py) created
  against a fake `ray.util.metrics` (tests/unit/conftest.py), named as Ray 2.60 exports them
  (prefix `ray_`, counters keep their `_total`, histograms add `_bucket`, `_sum`, `_count`); the
  names follow Prometheus' conventions (base units, counters that say what they count).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SCHEMAS = CLUSTER / "schemas"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
KUBERAY = CLUSTER / "kuberay-raycluster.yaml"
RULES = CLUSTER / "prometheus-rules.yaml"
DASHBOARD = CLUSTER / "grafana-dashboard.json"
KUBERNETES_MANIFESTS = (KUBERAY, RULES)
UPSTREAM = SCHEMAS / "upstream"
# The CRD schemas of each kind, as its operator publishes them (cluster/schemas/upstream/README.md says
# where each came from); a document must pass every one listed. KubeRay at both ends of the range
# docs/install.md supports.
UPSTREAM_SCHEMAS = {("ray.io/v1", "RayCluster"): ("kuberay-v1.5.0-raycluster", "kuberay-v1.7.0-raycluster"),
                    ("monitoring.coreos.com/v1", "PodMonitor"): ("prometheus-operator-v0.93.0-podmonitor",),
                    ("monitoring.coreos.com/v1", "PrometheusRule"): ("prometheus-operator-v0.93.0-prometheusrule",)}
SCHEMA_OF_KIND = {("ray.io/v1", "RayCluster"): "raycluster.schema.yaml",
                  ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.schema.yaml",
                  ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.yaml"}
# Kubernetes label syntax (what KubeRay checks group labels against, and Ray node labels follow).
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)$")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def launcher() -> dict:
    return load_yaml(LAUNCHER)


def manifest_documents(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kuberay_documents() -> list[dict]:
    return manifest_documents(KUBERAY)


def raycluster() -> dict:
    (cluster,) = [doc for doc in kuberay_documents() if doc["kind"] == "RayCluster"]
    return cluster


def worker_group(name: str) -> dict:
    (group,) = [group for group in raycluster()["spec"]["workerGroupSpecs"] if group["groupName"] == name]
    return group


def ray_schema_path() -> Path:
    try:
        return Path(metadata.distribution("ray").locate_file("ray/autoscaler/ray-schema.json"))
    except metadata.PackageNotFoundError:
        pytest.skip("Ray is not installed here: the launcher's schema ships with it")


def label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(LABEL_NAME.match(name)) and (not prefix or (len(prefix) <= 253 and bool(LABEL_PREFIX.match(prefix))))


def label_value_ok(value: str) -> bool:
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


# ---- the cluster launcher --------------------------------------------------------------------------


def test_launcher_config_matches_rays_schema():
    with open(ray_schema_path(), encoding="utf-8") as handle:
        schema = json.load(handle)
    jsonschema.validate(launcher(), schema)


def test_launcher_config_passes_rays_own_preparation_and_label_parsing(tmp_path):
    """Ray's launcher fills in defaults, merges setup commands and validates the result; each node
    type's setup commands write a labels file that `ray start --labels-file` accepts."""
    ray_schema_path()  # skips without Ray
    script = r"""
import json, os, subprocess, sys, yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray._private.label_utils import parse_node_labels_from_yaml_file
raw = yaml.safe_load(open(sys.argv[1]))
validate_config(prepare_config(raw))
labels = {}
types = dict(raw["available_node_types"], __default__={"worker_setup_commands": raw["setup_commands"]})
for name, node_type in types.items():
    commands = node_type.get("worker_setup_commands", raw["setup_commands"])
    for command in commands:
        if "labels.yaml" in command:
            subprocess.run(["bash", "-c", command], check=True)
    labels[name] = parse_node_labels_from_yaml_file(os.path.expanduser("~/raylsm-node/labels.yaml"))
print(json.dumps(labels))
"""
    env = dict(os.environ, HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script, str(LAUNCHER)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    labels = json.loads(done.stdout.strip().splitlines()[-1])
    disk = labels["kv_node"]["raylsm-disk"]
    assert disk.endswith("-nvme0") and label_value_ok(disk), labels
    for name in ("head", "sglang_gpu", "__default__"):
        assert "raylsm-disk" not in labels[name], labels


def test_launcher_only_kv_nodes_offer_shards_and_they_mount_their_disk():
    config = launcher()
    types = config["available_node_types"]
    offering = {name for name, node_type in types.items() if node_type["resources"].get("raylsm_shard")}
    assert offering == {"kv_node"}
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "raylsm_shard" not in start and "--resources" not in start, \
        "start commands are shared by every worker type: resources belong to each node type"
    assert "--labels-file=$HOME/raylsm-node/labels.yaml" in start
    kv = types["kv_node"]
    init = " ".join(kv["initialization_commands"])
    assert "mount" in init and "/mnt/nvme" in init and "chown 1000:100 /mnt/nvme/raylsm" in init
    assert "--volume=/mnt/nvme:/mnt/nvme" in kv["docker"]["worker_run_options"]
    up = [command for command in config["head_start_ray_commands"] if command.startswith("raylsm up")]
    assert up and "--data-dir /mnt/nvme/raylsm" in up[0] and "--address auto" in up[0]
    # The controller autoscales within the kv node type's bounds (docs/elastic.md).
    assert "--autoscale" in up[0]
    assert (_flag(up[0], "--min-shards"), _flag(up[0], "--max-shards")) == (kv["min_workers"], kv["max_workers"])
    for name, node_type in list(types.items()) + [("global", {"worker_setup_commands": config["setup_commands"]})]:
        commands = node_type.get("worker_setup_commands")
        if commands is None:
            continue
        installs = [command for command in commands if "raylsm-dist" in command]
        assert installs, f"{name} does not install raylsm"
        assert all("[" not in command for command in installs), f"{name}: raylsm goes in without extras"
        assert any("labels.yaml" in command for command in commands), f"{name} writes no labels file"


# ---- Kubernetes manifests against their operators' own CRD schemas ---------------------------------


def test_every_cluster_yaml_is_checked():
    """A YAML file added to cluster/ is either the launcher's config or a manifest the tests below read."""
    assert set(CLUSTER.glob("*.yaml")) == {LAUNCHER, *KUBERNETES_MANIFESTS}


@functools.cache
def upstream(name: str) -> dict:
    """{"source": where it came from, "openAPIV3Schema": the CRD's schema} (read-only: shared)."""
    with gzip.open(UPSTREAM / f"{name}.json.gz", "rt", encoding="utf-8") as handle:
        return json.load(handle)


def as_json_schema(node):
    """A CRD's structural schema (OpenAPI 3.0's schema object) as JSON Schema draft 4, whose keywords it
    shares (OpenAPI 3.0 took its schema object from draft wright-00, the draft 4 family). Two of
    Kubernetes' extensions change what a value may be, and so are spelled out: an
    `x-kubernetes-int-or-string` node takes an integer or a string (whether or not it also carries
    the usual `anyOf`), and a `nullable` one also takes null. The others shape what the API server
    keeps rather than what it accepts (api_server_problems). `format` is not checked: the CRDs here
    use int32, int64 and date-time (status only), and the API server does not bound int32/int64.
    `pattern`s are Go (RE2) regular expressions, translated (go_pattern_in_python)."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: as_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = as_json_schema(value)
        else:
            out[key] = value
    if isinstance(node.get("pattern"), str):
        out["pattern"] = go_pattern_in_python(node["pattern"])
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
        if out.get("anyOf") == [{"type": "integer"}, {"type": "string"}]:
            del out["anyOf"]  # the form Kubernetes asks for, the same as `type` (one error, not two)
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def go_pattern_in_python(pattern: str) -> str:
    """A Go regular expression as Python's `re` reads it the same, for the forms the CRDs use: Go takes
    flags such as `(?i)` after `^`, Python only at the very start; Go's `$` matches at the end of the
    text only, Python's also before a final newline (so `\\Z`)."""
    flags = re.match(r"^\^(\(\?[a-z]+\))", pattern)
    if flags:
        pattern = flags.group(1) + "^" + pattern[flags.end():]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return pattern


@functools.cache
def upstream_validator(name: str) -> jsonschema.Draft4Validator:
    schema = as_json_schema(upstream(name)["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def upstream_schema_errors(doc: dict, name: str) -> list[str]:
    return [f"/{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in upstream_validator(name).iter_errors(doc)]


def api_server_problems(value, schema: dict, path: str = "", resource_root: bool = True) -> list[str]:
    """What the API server does with `value` under a CRD's structural schema that JSON Schema does not:

    - a field the schema does not declare is pruned: dropped without a word, or, under kubectl's
      default strict field validation, refused. Either way the setting never reaches the operator.
      Maps (`additionalProperties`) declare every key; under `x-kubernetes-preserve-unknown-fields`
      undeclared fields are kept and declared ones are still walked; `apiVersion`, `kind` and
      `metadata` of the resource (and of an `x-kubernetes-embedded-resource`) are the API server's
      own, not the CRD's (the strict subsets check each document's top-level metadata);
    - a list-map (`x-kubernetes-list-type: map`) refuses two items with the same keys (a key's schema
      default standing in when an item leaves it out, as the API server defaults it first), a set
      (`set`) two equal items;
    - an `x-kubernetes-validations` (CEL) rule: not evaluated here, so a manifest that sets a field
      carrying one is reported, for whoever adds the field to check the rule."""
    problems = []
    if "x-kubernetes-validations" in schema:
        rules = [rule["rule"] for rule in schema["x-kubernetes-validations"]]
        problems.append(f"{path or '/'}: carries CEL rules this test cannot evaluate: {rules}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        open_map = schema.get("additionalProperties")
        own_fields = resource_root or schema.get("x-kubernetes-embedded-resource", False)
        for key, item in value.items():
            where = f"{path}/{key}"
            if own_fields and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in properties:
                problems += api_server_problems(item, properties[key], where, False)
            elif isinstance(open_map, dict):
                problems += api_server_problems(item, open_map, where, False)
            elif not (open_map is True or schema.get("x-kubernetes-preserve-unknown-fields")):
                problems.append(f"{where}: not declared by the CRD (the API server drops it, or refuses it "
                                f"under strict field validation)")
    elif isinstance(value, list):
        items = schema.get("items", {})
        for index, item in enumerate(value):
            problems += api_server_problems(item, items, f"{path}/{index}", False)
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            defaults = {key: items.get("properties", {}).get(key, {}).get("default") for key in keys}
            seen = [tuple(item.get(key, defaults[key]) for key in keys) for item in value if isinstance(item, dict)]
            problems += [f"{path}: two items with {dict(zip(keys, twice))} (a list-map keyed by {keys})"
                         for twice in sorted({entry for entry in seen if seen.count(entry) > 1}, key=str)]
        elif list_type == "set":
            seen = [json.dumps(item, sort_keys=True) for item in value]
            problems += [f"{path}: {twice} twice (a set)"
                         for twice in sorted({entry for entry in seen if seen.count(entry) > 1})]
    return problems


def upstream_cases() -> list[tuple[Path, int, str]]:
    cases = []
    for path in KUBERNETES_MANIFESTS:
        for index, doc in enumerate(manifest_documents(path)):
            names = UPSTREAM_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")), ("(none)",))
            cases += [(path, index, name) for name in names]
    return cases


def upstream_case_id(value) -> str:
    return value.name if isinstance(value, Path) else str(value)


@pytest.mark.parametrize("path,document,schema", upstream_cases(), ids=upstream_case_id)
def test_kubernetes_manifests_match_their_operators_crd_schema(path, document, schema):
    doc = manifest_documents(path)[document]
    assert schema != "(none)", f"no upstream CRD schema for {doc.get('apiVersion')} {doc.get('kind')}: vendor " \
                               "one (cluster/schemas/refresh_upstream.py) and name it in UPSTREAM_SCHEMAS"
    errors = upstream_schema_errors(doc, schema)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path,document,schema", upstream_cases(), ids=upstream_case_id)
def test_kubernetes_manifests_set_only_what_their_operators_crd_declares(path, document, schema):
    doc = manifest_documents(path)[document]
    assert schema != "(none)", f"no upstream CRD schema for {doc.get('apiVersion')} {doc.get('kind')}"
    problems = api_server_problems(doc, upstream(schema)["openAPIV3Schema"])
    assert not problems, "\n".join(problems)


def test_upstream_schemas_are_the_kinds_they_are_used_for_and_say_where_they_came_from():
    readme = (UPSTREAM / "README.md").read_text(encoding="utf-8")
    for (api_version, kind), names in UPSTREAM_SCHEMAS.items():
        for name in names:
            source = upstream(name)["source"]
            assert f"{source['group']}/{source['version']}" == api_version and source["kind"] == kind, name
            assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and source["tag"] in name, name
            assert source["license"] == "Apache-2.0", name
            row = next((line for line in readme.splitlines() if f"`{name}.json.gz`" in line), "")
            assert source["tag"] in row and source["commit"] in row and source["path"] in row, \
                f"cluster/schemas/upstream/README.md does not give {name}'s source"
    assert set(UPSTREAM.glob("*.json.gz")) == {UPSTREAM / f"{name}.json.gz"
                                              for names in UPSTREAM_SCHEMAS.values() for name in names}


@pytest.mark.parametrize("schema", UPSTREAM_SCHEMAS[("ray.io/v1", "RayCluster")])
def test_the_upstream_checks_catch_mistyped_misspelled_and_repeated_fields(schema):
    """Each kind of mistake fails, and the two checks are both needed: JSON Schema lets a misspelled
    field through (CRD objects do not close their properties; the API server prunes instead)."""
    crd = upstream(schema)["openAPIV3Schema"]

    def problems(doc: dict) -> tuple[list[str], list[str]]:
        return upstream_schema_errors(doc, schema), api_server_problems(doc, crd)

    assert problems(raycluster()) == ([], [])

    misspelled = raycluster()
    misspelled["spec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelectr"] = {"a": "b"}
    errors, pruned = problems(misspelled)
    assert errors == [] and len(pruned) == 1 and "/nodeSelectr: not declared" in pruned[0], (errors, pruned)

    mistyped = raycluster()
    mistyped["spec"]["workerGroupSpecs"][0]["replicas"] = "2"
    mistyped["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    errors, _ = problems(mistyped)
    assert len(errors) == 2 and all("is not of type 'integer'" in error for error in errors), errors

    # Quantities are int-or-string: 8 and "8" pass, a list does not.
    limits = lambda doc: doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    quantity = raycluster()
    limits(quantity)["cpu"] = 8
    assert problems(quantity) == ([], [])
    limits(quantity)["cpu"] = [8]
    errors, _ = problems(quantity)
    assert len(errors) == 1 and "/cpu:" in errors[0], errors

    repeated = raycluster()
    containers = repeated["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    containers.append(copy.deepcopy(containers[0]))  # a second container named ray-head
    containers[0]["ports"].append({"containerPort": 6379, "name": "gcs-again"})  # protocol defaults to TCP
    _, duplicates = problems(repeated)
    assert len(duplicates) == 2 and any("'containerPort': 6379, 'protocol': 'TCP'" in line for line in duplicates) \
        and any("{'name': 'ray-head'}" in line for line in duplicates), duplicates

    # What the CRD cannot see: rayStartParams is any map of strings to it, so the `labels` key that
    # KubeRay refuses passes both checks here. test_kuberay_admits_the_raycluster is what stops it.
    labelled = raycluster()
    labelled["spec"]["workerGroupSpecs"][0]["rayStartParams"]["labels"] = "raylsm-disk=x"
    assert problems(labelled) == ([], [])


def test_the_upstream_checks_catch_mistakes_in_the_prometheus_rules():
    (rules,) = manifest_documents(RULES)
    schema = "prometheus-operator-v0.93.0-prometheusrule"
    crd = upstream(schema)["openAPIV3Schema"]
    assert upstream_schema_errors(rules, schema) == [] and api_server_problems(rules, crd) == []
    broken = copy.deepcopy(rules)
    rule = broken["spec"]["groups"][0]["rules"][0]
    rule["fro"] = rule.pop("for")
    del broken["spec"]["groups"][0]["name"]
    assert len(upstream_schema_errors(broken, schema)) == 1  # a group needs its name
    assert [problem.split(":")[0] for problem in api_server_problems(broken, crd)] == ["/spec/groups/0/rules/0/fro"]
    rule["expr"] = 1  # int-or-string
    assert len(upstream_schema_errors(broken, schema)) == 1
    rule["expr"] = ["up"]
    assert len(upstream_schema_errors(broken, schema)) == 2


def test_the_api_server_walk_follows_kubernetes_structural_schemas():
    """The extensions the vendored CRDs do not use today, on a schema made up for the purpose."""
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}}},
            "map": {"type": "object",
                    "additionalProperties": {"type": "object", "properties": {"b": {"type": "integer"}}}},
            "embedded": {"type": "object", "x-kubernetes-embedded-resource": True,
                         "properties": {"spec": {"type": "object", "properties": {}}}},
            "port": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True, "enum": ["x"]},
            "set": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
            "strategy": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},  # Go's flags, after ^
            "guarded": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}}}}}
    good = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "x"},
            "spec": {"open": {"anything": [1], "known": {"a": "y"}}, "map": {"k": {"b": 1}},
                     "embedded": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "spec": {}},
                     "port": 8080, "maybe": None, "set": ["a", "b"], "strategy": "Abort"}}
    validator = jsonschema.Draft4Validator(as_json_schema(schema))
    assert api_server_problems(good, schema) == [] and list(validator.iter_errors(good)) == []
    good["spec"]["port"] = "http"
    assert list(validator.iter_errors(good)) == []
    bad = copy.deepcopy(good)
    bad["spec"]["open"]["known"]["z"] = 1  # declared under preserve-unknown: still walked
    bad["spec"]["map"]["k"]["c"] = 1
    bad["spec"]["embedded"]["spec"]["d"] = 1
    bad["spec"]["set"] = ["a", "a"]
    bad["spec"]["guarded"] = "g"
    assert [problem.split(":")[0] for problem in api_server_problems(bad, schema)] == \
        ["/spec/open/known/z", "/spec/map/k/c", "/spec/embedded/spec/d", "/spec/set", "/spec/guarded"]
    bad["spec"]["port"], bad["spec"]["maybe"], bad["spec"]["strategy"] = 1.5, "y", "warn\n"
    assert sorted("/".join(map(str, error.absolute_path)) for error in validator.iter_errors(bad)) == \
        ["spec/maybe", "spec/port", "spec/strategy"]


# ---- KubeRay ---------------------------------------------------------------------------------------


def schema_registry() -> Registry:
    resources = [(path.name, Resource.from_contents(load_yaml(path))) for path in SCHEMAS.glob("*.schema.yaml")]
    return Registry().with_resources(resources)


@pytest.mark.parametrize("path,document", [(path, index) for path in KUBERNETES_MANIFESTS
                                            for index in range(len(manifest_documents(path)))],
                         ids=lambda value: value.name if isinstance(value, Path) else str(value))
def test_kubernetes_manifests_match_the_schema_of_their_kind(path, document):
    doc = manifest_documents(path)[document]
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_OF_KIND, f"no schema for {key} in cluster/schemas/: add one for every kind the file uses"
    schema = load_yaml(SCHEMAS / SCHEMA_OF_KIND[key])
    validator = jsonschema.Draft7Validator(schema, registry=schema_registry())
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


def test_schemas_are_strict():
    """A misspelled field must fail: the schemas are no use if they accept anything."""
    doc = raycluster()
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelectr"] = {}
    doc["spec"]["headGroupSpec"]["rayStartParam"] = {}
    validator = jsonschema.Draft7Validator(load_yaml(SCHEMAS / "raycluster.schema.yaml"), registry=schema_registry())
    assert len(list(validator.iter_errors(doc))) == 2


def test_kuberay_admits_the_raycluster():
    """What KubeRay (1.5 and later) checks when it admits a RayCluster, beyond the schema
    (ray-operator/controllers/ray/utils/validation.go): ValidateRayClusterMetadata, a name of at most
    53 characters that is a DNS-1035 label; ValidateRayClusterSpec, at least one container per group,
    no `labels` in rayStartParams (the group's `labels` field instead), label keys and values in
    Kubernetes syntax, resources either in rayStartParams or in `resources`, and (from 1.6) replica
    bounds non-negative and in order; its optional webhook, unique worker group names."""
    name = raycluster()["metadata"]["name"]
    assert len(name) <= 53 and re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    spec = raycluster()["spec"]
    groups = [("head", spec["headGroupSpec"])] + [(group["groupName"], group) for group in spec["workerGroupSpecs"]]
    assert len({name for name, _ in groups}) == len(groups)
    for name, group in groups:
        assert group["template"]["spec"]["containers"], f"{name}: a group needs a container"
        params = group.get("rayStartParams", {})
        assert "labels" not in params, f"{name}: KubeRay rejects rayStartParams['labels']"
        for key, value in group.get("labels", {}).items():
            assert label_key_ok(key) and label_value_ok(value), (name, key, value)
        in_params = any(params.get(key) for key in ("num-cpus", "num-gpus", "memory", "resources"))
        assert not (in_params and group.get("resources")), f"{name}: resources in both places"
        if name != "head":
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name


def _flag(command: str, flag: str) -> int:
    """The integer value of `flag` in a shell command line."""
    match = re.search(re.escape(flag) + r"[ =](\d+)", command)
    assert match, f"{flag} not in {command!r}"
    return int(match.group(1))


def test_kv_pods_name_their_disk_and_keep_one_pod_per_disk_node():
    from raylsm.config import ShardConfig

    kv = worker_group("kv")
    assert kv["resources"] == {ShardConfig().resource_name: "1"}
    # The autoscaler runs the group between its bounds, which are the controller's (docs/elastic.md);
    # the node selector and the anti-affinity keep every pod on a labelled disk node, one per node.
    (head,) = raycluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    up = " ".join(head["lifecycle"]["postStart"]["exec"]["command"])
    assert "--autoscale" in up
    assert _flag(up, "--min-shards") == kv["minReplicas"] and _flag(up, "--max-shards") == kv["maxReplicas"]
    assert raycluster()["spec"]["enableInTreeAutoscaling"] is True
    pod = kv["template"]["spec"]
    assert pod["nodeSelector"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {"ray.io/cluster": raycluster()["metadata"]["name"],
                                                    "ray.io/group": "kv"}
    (volume,) = [volume for volume in pod["volumes"] if "hostPath" in volume]
    assert volume["hostPath"]["type"] == "Directory", "a missing disk must fail the pod, not fill the root disk"
    assert any("chown 1000:100 /mnt/nvme/raylsm" in " ".join(init["command"]) for init in pod["initContainers"])

    (container,) = pod["containers"]
    env = [entry["name"] for entry in container["env"]]
    assert env.index("NODE_NAME") < env.index("RAY_OVERRIDE_LABELS"), "$(NODE_NAME) expands only if defined first"
    node_name = next(entry for entry in container["env"] if entry["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    override = next(entry for entry in container["env"] if entry["name"] == "RAY_OVERRIDE_LABELS")["value"]
    node = "ip-10-0-12-34.us-west-2.compute.internal"  # an EKS node name
    labels = json.loads(override.replace("$(NODE_NAME)", node))
    disk = labels[ShardConfig().disk_label]
    # A Ray label value, and a disk name raylsm uses as is (else it names the shard after the node id).
    assert label_value_ok(disk) and re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", disk), disk
    for group in raycluster()["spec"]["workerGroupSpecs"]:
        if group["groupName"] != "kv":
            assert "raylsm_shard" not in json.dumps(group), group["groupName"]


def test_the_head_starts_the_controller_without_failing_its_hook():
    (head,) = raycluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    command = " ".join(head["lifecycle"]["postStart"]["exec"]["command"])
    assert "raylsm up --address auto --data-dir /mnt/nvme/raylsm" in command
    assert command.rstrip().endswith("exit 0"), "a failing postStart hook kills the head"


# ---- versions --------------------------------------------------------------------------------------


def make_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_ray_python_and_sglang_versions_agree():
    ray_version, python = make_variable("RAY_VERSION"), make_variable("RAY_PYTHON")
    image = f"rayproject/ray:{ray_version}-{python}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE={image}\n" in dockerfile and f"ARG RAY_VERSION={ray_version}\n" in dockerfile
    assert raycluster()["spec"]["rayVersion"] == ray_version
    config = launcher()
    assert config["docker"]["image"] == image
    assert config["available_node_types"]["sglang_gpu"]["docker"]["worker_image"] == f"{image}-gpu"
    sglang = make_variable("SGLANG_VERSION")
    installs = " ".join(config["available_node_types"]["sglang_gpu"]["worker_setup_commands"])
    assert f'"sglang=={sglang}"' in installs


def test_sglang_launch_keeps_the_call_timeout_inside_the_prefetch_budget():
    from raylsm.config import ClientConfig
    from raylsm.sglang.extra_config import tier_config_from_extra

    text = (CLUSTER / "sglang-launch.sh").read_text()
    extra = json.loads(re.search(r"--hicache-storage-backend-extra-config '(\{.*?\})'", text, re.S).group(1))
    client = tier_config_from_extra(extra).client
    assert client.call_timeout_s <= extra["prefetch_timeout_base"] / 2
    assert ClientConfig().call_timeout_s <= 1.0 / 2  # SGLang 0.5.23's default prefetch_timeout_base


# ---- raylsm commands in files and docs -------------------------------------------------------------

# `raylsm <word>` where a command starts: at a line's start (after indentation, "- ", "$ "), after an
# install's bin directory (`.venv/bin/raylsm`, `$(BIN)/raylsm`), or after a backtick, quote, `(`, `;`,
# `&&`, `||`, `|`. (So not in prose, which is why Markdown is searched in its code only.)
COMMAND = re.compile(r"""(?:^[ \t]*(?:[-$][ \t]+)?|(?:bin|\))/|[`"'(;|&][ \t]*)"""
                     r"""raylsm[ \t]+([a-z][-a-z]*)([^\n`;|&>"')]*)""", re.M)
END_OF_COMMAND = re.compile(r"\s#")  # a shell comment after the command


def command_text(path: Path) -> str:
    """The parts of a file where commands are: all of it, or a Markdown file's code."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    if path.suffix != ".md":
        return text
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(blocks + spans)


def raylsm_commands(text: str) -> list[tuple[list[str], list[str]]]:
    """(command path, flags) of every `raylsm ...` command line in `text`."""
    found = []
    for match in COMMAND.finditer(text):
        words = [match.group(1)] + END_OF_COMMAND.split(match.group(2))[0].split()
        words = [word.strip("[]") for word in words]
        path = words[:2] if words[0] == "bench" and len(words) > 1 else words[:1]
        flags = [word.split("=")[0] for word in words[len(path):] if word.startswith("--")]
        found.append((path, flags))
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def documented_files() -> list[Path]:
    files = sorted(CLUSTER.glob("*.yaml")) + sorted(CLUSTER.glob("*.sh")) + sorted((ROOT / "docs").glob("*.md"))
    return files + [ROOT / "README.md", ROOT / "Makefile", ROOT / "Dockerfile"]


def unknown_commands(text: str) -> list[str]:
    from raylsm.cli import build_parser

    problems = []
    for path, flags in raylsm_commands(text):
        parser = build_parser()
        for word in path:
            parser = subparsers(parser).get(word)
            if parser is None:
                problems.append(f"raylsm {' '.join(path)}: no such command")
                break
        else:
            problems += [f"raylsm {' '.join(path)} {flag}: no such flag" for flag in flags
                         if flag not in parser._option_string_actions]
    return problems


def test_the_command_finder_finds_commands_and_skips_prose():
    text = ("# a tier; see raylsm.sglang.backend and /mnt/nvme/raylsm to\n"
            "  - raylsm up --address auto --data-dir /mnt/x --no-wait >> /tmp/log\n"
            "$(BIN)/raylsm bench trace --quick --plot x.png; raylsm down\n"
            "run `raylsm status --adress X` or `raylsm stop`\n")
    assert raylsm_commands(text) == [(["up"], ["--address", "--data-dir", "--no-wait"]),
                                     (["bench", "trace"], ["--quick", "--plot"]), (["down"], []),
                                     (["status"], ["--adress"]), (["stop"], [])]
    assert unknown_commands(text) == ["raylsm status --adress: no such flag", "raylsm stop: no such command"]


@pytest.mark.parametrize("path", documented_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_raylsm_command_shown_exists(path):
    assert not unknown_commands(command_text(path))


def test_the_docs_show_commands_at_all():
    """The finder must see the commands the deploy guide is about (else the test above proves nothing)."""
    shown = {" ".join(path) for file in documented_files() for path, _ in raylsm_commands(command_text(file))}
    assert {"up", "status", "down", "bench trace"} <= shown, shown


# ---- metrics in the dashboard, the alerts and docs/deploy.md --------------------------------------

RAY_METRIC_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "instance", "job"}
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# Unit words a name must not carry: Prometheus names use base units (seconds, bytes).
NON_BASE_UNITS = {"ms", "us", "ns", "millis", "micros", "msec", "kb", "mb", "gb", "kib", "mib", "gib", "percent"}


def metric_families(ray_metrics) -> dict[str, tuple[str, set[str]]]:
    """{name as Ray 2.60 exports it: (kind, label keys)} of every metric raylsm defines: the metric
    classes of every metrics module created against a fake `ray.util.metrics` (conftest.py). Ray
    prefixes `ray_`, counters keep (or get) `_total`; a histogram is named by its base name here."""
    families = {}
    for name, metric in ray_metrics.define_all().items():
        exported = "ray_" + name
        if metric.kind == "Counter" and not exported.endswith("_total"):
            exported += "_total"
        families[exported] = (metric.kind, set(metric.tag_keys))
    return families


def exported_metrics(ray_metrics) -> dict[str, set[str]]:
    """{exported series name: its label keys}; a histogram's are `_bucket` (with `le`), `_sum`, `_count`."""
    exported: dict[str, set[str]] = {}
    for name, (kind, tag_keys) in metric_families(ray_metrics).items():
        if kind == "Histogram":
            exported.update({name + "_bucket": tag_keys | {"le"}, name + "_sum": tag_keys, name + "_count": tag_keys})
        else:
            exported[name] = tag_keys
    return exported


def closed_label_values(ray_metrics) -> dict[tuple[str, str], set[str]]:
    """{(family, label): every value the code gives that label}, for labels whose values the code
    enumerates; other labels' values (shard names, shard methods) are open."""
    from raylsm.store import workload_stats

    actors = ray_metrics.modules["raylsm.actors.metrics"]
    controller = ray_metrics.modules["raylsm.controller.metrics"]
    outcomes = actors._OUTCOMES.values()
    shard_ops = set(re.findall(r'_data_call\("(\w+)"\)', (ROOT / "raylsm/actors/shard_actor.py").read_text()))
    snapshot = workload_stats.WorkloadStats().snapshot()
    return {
        ("ray_raylsm_get_pages_total", "outcome"): {outcome for metric, outcome in outcomes if metric == "get"},
        ("ray_raylsm_put_pages_total", "outcome"): {outcome for metric, outcome in outcomes if metric == "put"},
        ("ray_raylsm_probe_pages_total", "outcome"): {outcome for metric, outcome in outcomes if metric == "probe"},
        ("ray_raylsm_page_bytes_total", "direction"): set(actors._BYTES.values()),
        ("ray_raylsm_forwarded_pages_total", "outcome"): set(actors._FORWARDING.values()),
        ("ray_raylsm_shard_call_duration_seconds", "op"): shard_ops,
        ("ray_raylsm_client_failed_pages_total", "cause"): set(actors.ClientMetrics.CAUSES),
        ("ray_raylsm_client_call_duration_seconds", "op"): set(actors.ClientMetrics.SGLANG_CALLS),
        ("ray_raylsm_controller_shard_state", "state"): set(controller.STATES),
        ("ray_raylsm_estimated_miss_ratio", "capacity_multiple"): {str(multiple) for multiple
                                                                   in workload_stats.CAPACITY_MULTIPLES},
        ("ray_raylsm_hit_pages_by_depth_total", "depth_pages"): set(snapshot["hits_by_depth_pages"]),
        ("ray_raylsm_hit_pages_by_age_total", "age_seconds"): set(snapshot["hits_by_age_s"]),
    }


def family_of(series: str, names) -> str:
    """The metric a series belongs to (a histogram's `_bucket`, `_sum`, `_count` -> its base name);
    `names`: the families, or the exported series."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series[:-len(suffix)]
        if series.endswith(suffix) and (base in names or base + "_bucket" in names):
            return base
    return series


def raylsm_sources() -> str:
    return "\n".join(path.read_text() for path in (ROOT / "raylsm").rglob("*.py"))


def queries() -> list[tuple[str, str]]:
    """(where, PromQL expression) of every query in the dashboard and the rules."""
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    found = [(f"panel {panel['title']!r}", target["expr"]) for panel in dashboard["panels"]
             for target in panel["targets"]]
    found += [(f"variable {variable['name']}", variable["definition"])
              for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
    for doc in manifest_documents(RULES):
        found += [(f"rule {rule.get('alert') or rule.get('record')}", str(rule["expr"]))
                  for group in doc["spec"]["groups"] for rule in group["rules"]]
    return found


def query_problems(expr: str, exported: dict[str, set[str]], sources: str,
                   closed: dict[tuple[str, str], set[str]] | None = None) -> list[str]:
    """What is wrong with one PromQL expression: unbalanced brackets, a metric raylsm does not export,
    a label it does not have, a label value the code never sets (one of a closed set where the code
    enumerates the values, else a string literal in raylsm's sources; `=~` alternatives of plain
    words are each checked too), a `by`/`without`/`label_values` label no metric of it has."""
    closed = closed or {}
    problems = []
    depth = []
    for char in expr:  # brackets balance (no PromQL parser is light enough for CI)
        if char in "([{":
            depth.append(")]}"["([{".index(char)])
        elif char in ")]}" and (not depth or depth.pop() != char):
            problems.append("unbalanced brackets")
            break
    if depth:
        problems.append("unbalanced brackets")
    used = re.findall(r"\b(ray_[A-Za-z0-9_]+)(\{[^}]*\})?", expr)
    if not used:
        problems.append("names no ray_ metric")
    tag_keys = set(RAY_METRIC_LABELS)
    for name, selector in used:
        if name not in exported:
            problems.append(f"{name}: no such metric (raylsm exports {sorted(exported)})")
            continue
        tag_keys |= exported[name]
        for key, operator, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
            if key not in exported[name] | RAY_METRIC_LABELS:
                problems.append(f"{name}: no label {key!r}")
                continue
            if value.startswith("$"):
                continue
            if operator in ("=", "!="):
                values = [value]
            elif re.fullmatch(r"[\w.+-]+(\|[\w.+-]+)*", value):
                values = value.split("|")
            else:
                continue  # a real regular expression: not checked
            known = closed.get((family_of(name, exported), key))
            for one in values:
                if (one not in known) if known is not None else (f'"{one}"' not in sources):
                    problems.append(f"{name}{{{key}={one!r}}}: raylsm never sets that value")
    for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        problems += [f"by ({label}): no such label" for label in re.findall(r"\w+", labels) if label not in tag_keys]
    for label in re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
        if label not in tag_keys:
            problems.append(f"label_values(..., {label}): no such label")
    return problems


def test_the_controller_metrics_know_every_shard_state(ray_metrics):
    """raylsm.controller.metrics spells the controller's states out (it imports no Ray beyond its
    metrics): they are raylsm.controller.states' constants and the "failed" of its status()."""
    import ast

    tree = ast.parse((ROOT / "raylsm" / "controller" / "states.py").read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                constants.update({name.id: value.value for name, value in zip(names, values)
                                  if isinstance(name, ast.Name) and isinstance(value, ast.Constant)})
    states = {constants[name] for name in ("STARTING", "SERVING", "UNREACHABLE", "DRAINING", "WARMING")} | {"failed"}
    assert set(ray_metrics.modules["raylsm.controller.metrics"].STATES) == states


def test_every_metrics_module_and_class_is_read(ray_metrics):
    """The checks below see every metric raylsm defines: only the modules of conftest.METRIC_CLASSES
    import `ray.util.metrics`, and every *Metrics class in them is created."""
    metric_classes = ray_metrics.classes
    defining = {".".join(path.relative_to(ROOT).with_suffix("").parts) for path in (ROOT / "raylsm").rglob("*.py")
                if "ray.util.metrics" in path.read_text()}
    assert defining == set(metric_classes)
    for module_name, classes in metric_classes.items():
        module = ray_metrics.modules[module_name]
        defined_here = {name for name, value in vars(module).items()
                        if isinstance(value, type) and value.__module__ == module_name and name.endswith("Metrics")}
        assert defined_here == set(classes), module_name


def test_metric_names_follow_prometheus_conventions(ray_metrics):
    """Base units, counters that end in `_total` and say what they count, histograms of durations in
    seconds with buckets from 100 us to 10 s."""
    defined = ray_metrics.define_all()
    assert len(defined) >= 25, sorted(defined)
    for name, metric in defined.items():
        words = name.split("_")
        assert re.fullmatch(r"raylsm(_[a-z0-9]+)+", name), name
        assert not NON_BASE_UNITS & set(words), f"{name}: not in base units"
        assert metric.description, name
        if metric.kind == "Counter":
            assert name.endswith("_total") and {"pages", "bytes", "calls", "events"} & set(words), \
                f"{name}: a counter ends in _total and says what it counts (pages, bytes, calls, events)"
        if metric.kind == "Histogram":
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a histogram in a base unit"
            if name.endswith("_seconds"):
                assert metric.boundaries[0] <= 1e-4 and 10 <= metric.boundaries[-1] <= 60, (name, metric.boundaries)
                assert metric.boundaries == sorted(metric.boundaries), name


def test_dashboard_and_alerts_query_metrics_raylsm_exports(ray_metrics):
    exported = exported_metrics(ray_metrics)
    closed = closed_label_values(ray_metrics)
    sources = raylsm_sources()
    problems = [f"{where}: {problem}" for where, expr in queries()
                for problem in query_problems(expr, exported, sources, closed)]
    assert not problems, "\n".join(problems)
    assert len(queries()) >= 10


def test_the_dashboard_shows_each_kind_of_metric_and_the_alerts_cover_what_operators_page_on(ray_metrics):
    """Shard side and client side latency, the controller, recovery, capacity and failures are on the
    dashboard; the alerts include a shard down, a hit-ratio drop, a disk near its budget, timeouts."""
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard_exprs = " ".join(target["expr"] for panel in json.load(handle)["panels"] for target in panel["targets"])
    shown = {family_of(name, metric_families(ray_metrics))
             for name in re.findall(r"\b(ray_[A-Za-z0-9_]+)", dashboard_exprs)}
    families = set(metric_families(ray_metrics))
    assert shown == families, f"not on the dashboard: {sorted(families - shown)}; not exported: {sorted(shown - families)}"
    rules = {rule["alert"]: str(rule["expr"]) for doc in manifest_documents(RULES)
             for group in doc["spec"]["groups"] for rule in group["rules"]}
    assert "ray_raylsm_controller_shard_state" in rules["RaylsmShardDown"]
    assert "ray_raylsm_probe_pages_total" in rules["RaylsmHitRatioDrop"]
    assert "ray_raylsm_disk_headroom_bytes" in rules["RaylsmDiskNearBudget"]
    assert 'cause=~"timeout|stalled"' in rules["RaylsmClientTimeouts"]


def test_the_metrics_check_catches_a_wrong_name_label_or_value(ray_metrics):
    exported = exported_metrics(ray_metrics)
    closed = closed_label_values(ray_metrics)
    sources = '"hit" "get"'

    def problems(expr):
        return query_problems(expr, exported, sources, closed)

    assert problems('rate(ray_raylsm_get_total[5m])') != []
    assert problems('rate(ray_raylsm_call_latency_ms_bucket[5m])') != []
    assert problems('sum by (shrd) (rate(ray_raylsm_get_pages_total[5m]))') != []
    assert problems('rate(ray_raylsm_get_pages_total{outcome="hits"}[5m])') != []
    assert problems('rate(ray_raylsm_get_pages_total{outcome=~"hit|corupt"}[5m])') != []
    assert problems('rate(ray_raylsm_client_failed_pages_total{cause=~"timeout|stall"}[5m])') != []
    assert problems('ray_raylsm_controller_shard_state{state="down"}') != []
    assert problems('rate(ray_raylsm_get_pages_total{outcome="hit"}[5m]') != []
    assert problems('rate(ray_raylsm_get_pages_total{outcome="hit"}[5m])') == []
    assert problems('histogram_quantile(0.99, sum by (le, op) (rate('
                    'ray_raylsm_client_call_duration_seconds_bucket{op=~"batch_exists|batch_get_v1"}[5m])))') == []
    assert problems('sum by (state) (max by (shard, state) (ray_raylsm_controller_shard_state))') == []


# The metrics table of docs/deploy.md: `| metric | labels | meaning |`, one row per metric; labels
# are `key` or `key (value, value, ...)`, comma-separated.
DOC_TABLE_HEADER = "| metric | labels | meaning |"


def documented_metrics(text: str) -> dict[str, dict[str, set[str] | None]]:
    """{metric: {label: its listed values, or None if none are listed}} from the metrics table."""
    lines = text.splitlines()
    start = lines.index(DOC_TABLE_HEADER) + 2
    documented = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        assert len(names) == 1, f"one metric per row: {line}"
        labels = {}
        for item in re.findall(r"(\w+)(?:\s*\(([^)]*)\))?(?:,|$)", cells[1]):
            key, values = item
            labels[key] = {value.strip() for value in values.split(",")} if values else None
        assert names[0] not in documented, f"{names[0]} twice"
        documented[names[0]] = labels
    return documented


def doc_table_problems(documented, families, closed, sources: str) -> list[str]:
    problems = [f"{name}: not documented" for name in sorted(set(families) - set(documented))]
    problems += [f"{name}: documented, not exported" for name in sorted(set(documented) - set(families))]
    for name in sorted(set(documented) & set(families)):
        labels, tag_keys = documented[name], families[name][1]
        if set(labels) != tag_keys:
            problems.append(f"{name}: labels {sorted(labels)}, exported {sorted(tag_keys)}")
        for key, values in labels.items():
            known = closed.get((name, key))
            if known is not None and values != known:
                problems.append(f"{name}: {key} values {sorted(values or ())}, the code's {sorted(known)}")
            elif known is None and values:
                problems += [f"{name}: {key}={value!r}, never set" for value in sorted(values)
                             if f'"{value}"' not in sources]
    return problems


def test_deploy_doc_lists_exactly_the_exported_metrics(ray_metrics):
    """docs/deploy.md's table: every metric raylsm exports and no other, each with its labels, and
    every value of a label the code enumerates (a value listed for an open label is one the code sets)."""
    documented = documented_metrics(DEPLOY_DOC.read_text(encoding="utf-8"))
    problems = doc_table_problems(documented, metric_families(ray_metrics), closed_label_values(ray_metrics),
                                  raylsm_sources())
    assert not problems, "\n".join(problems)


def test_the_doc_check_catches_a_missing_metric_label_or_value(ray_metrics):
    families = metric_families(ray_metrics)
    closed = closed_label_values(ray_metrics)
    sources = raylsm_sources()
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    assert doc_table_problems(documented_metrics(text), families, closed, sources) == []
    broken = {
        "a metric missing": re.sub(r"\n\| `ray_raylsm_ghost_hit_pages_total` \|[^\n]*", "", text),
        "an old name": text.replace("`ray_raylsm_shard_call_duration_seconds`", "`ray_raylsm_call_latency_ms`"),
        "a label missing": text.replace("| op (batch_exists,", "| (batch_exists,"),
        "a cause missing": text.replace("timeout, stalled, bad_input, error)", "timeout, error)"),
        "a value never set": text.replace("probe_located, get_batch,", "probe_located, get_batches,"),
    }
    for what, changed in broken.items():
        assert changed != text, what
        assert doc_table_problems(documented_metrics(changed), families, closed, sources) != [], what


def test_the_sglang_calls_timed_are_the_adapters_batch_calls():
    """`ClientMetrics.SGLANG_CALLS` are RayLSMStorage's batch methods, and the adapter times each."""
    adapter = (ROOT / "raylsm" / "sglang" / "backend.py").read_text()
    metrics = (ROOT / "raylsm" / "actors" / "metrics.py").read_text()
    (calls,) = re.findall(r"SGLANG_CALLS = \(([^)]*)\)", metrics)
    calls = set(re.findall(r'"(\w+)"', calls))
    assert calls == set(re.findall(r"\n    def (batch_\w+)\(", adapter))
    timed = set(re.findall(r'_observe\("(\w+)"', adapter)) | set(re.findall(r'_transfer_v1\("\w+", "(\w+)"', adapter))
    assert timed == calls


def test_dashboard_is_a_grafana_dashboard():
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos", "targets", "datasource"} <= set(panel), panel.get("title")
        assert all(target["expr"] and target["refId"] for target in panel["targets"])
