"""Unit tests run without Ray: any attempt to start or join a Ray cluster fails loudly. raylsm's
metric modules can be imported against a fake `ray.util.metrics` (the `ray_metrics` fixture)."""

from __future__ import annotations

import importlib
import sys
import types

import pytest


class RayForbiddenInUnitTests(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise RayForbiddenInUnitTests("tests/unit must not use Ray; put the test under tests/ray")


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    fake = types.ModuleType("ray")
    fake.init = _refuse
    fake.remote = _refuse
    fake.get = _refuse
    fake.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "ray", fake)
    yield fake


# ---- raylsm's metrics, without Ray ------------------------------------------------------------------

# Every module that defines metrics, and the metric classes in it with their constructor arguments
# (tests/unit/test_cluster_files.py checks that no other module and no other class defines any).
METRIC_CLASSES = {"raylsm.actors.metrics": {"ShardMetrics": ("tests-shard",), "ClientMetrics": ()},
                  "raylsm.controller.metrics": {"ControllerMetrics": ()}}


class FakeMetric:
    """One metric as `ray.util.metrics` defines it (the same constructor and recording checks: tag
    values are strings, every tag key and no other is given); records what is exported."""

    kind = ""

    def __init__(self, registry: "RayMetricsRecorder", name: str, description: str = "",
                 boundaries: list | None = None, tag_keys: tuple | None = None):
        if not isinstance(tag_keys or (), tuple):
            raise TypeError(f"tag_keys should be a tuple, got {type(tag_keys)}")
        self.name, self.description, self.boundaries = name, description, boundaries
        self.tag_keys = tuple(tag_keys or ())
        self.values: dict[tuple, object] = {}  # sorted tag items -> value (a list for a histogram)
        registry.defined[name] = self

    def _key(self, tags: dict | None) -> tuple:
        tags = tags or {}
        assert set(tags) == set(self.tag_keys), f"{self.name}: tags {sorted(tags)}, defined {sorted(self.tag_keys)}"
        assert all(isinstance(value, str) for value in tags.values()), f"{self.name}: {tags}"
        return tuple(sorted(tags.items()))

    def value(self, **tags):
        return self.values.get(tuple(sorted(tags.items())))


class FakeCounter(FakeMetric):
    kind = "Counter"

    def __init__(self, registry, name, description="", tag_keys=None):
        super().__init__(registry, name, description, None, tag_keys)

    def inc(self, value=1.0, tags=None):
        assert isinstance(value, (int, float)) and value > 0, f"{self.name}: inc({value!r})"
        key = self._key(tags)
        self.values[key] = self.values.get(key, 0) + value


class FakeGauge(FakeMetric):
    kind = "Gauge"

    def __init__(self, registry, name, description="", tag_keys=None):
        super().__init__(registry, name, description, None, tag_keys)

    def set(self, value, tags=None):
        assert isinstance(value, (int, float)), f"{self.name}: set({value!r})"
        self.values[self._key(tags)] = value


class FakeHistogram(FakeMetric):
    kind = "Histogram"

    def __init__(self, registry, name, description="", boundaries=None, tag_keys=None):
        if not boundaries or any(boundary <= 0 for boundary in boundaries):
            raise ValueError(f"{name}: boundaries {boundaries}")
        super().__init__(registry, name, description, list(boundaries), tag_keys)

    def observe(self, value, tags=None):
        assert isinstance(value, (int, float)), f"{self.name}: observe({value!r})"
        self.values.setdefault(self._key(tags), []).append(value)


class RayMetricsRecorder:
    """The metric modules of METRIC_CLASSES imported against a fake `ray.util.metrics`: `defined`
    holds every metric created by name, `modules` the imported modules."""

    def __init__(self) -> None:
        self.defined: dict[str, FakeMetric] = {}
        self.modules: dict = {}
        self.classes = METRIC_CLASSES  # (tests read it here: `from conftest import` may find another conftest)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("ray.util.metrics")
        module.Counter = lambda *args, **kwargs: FakeCounter(self, *args, **kwargs)
        module.Gauge = lambda *args, **kwargs: FakeGauge(self, *args, **kwargs)
        module.Histogram = lambda *args, **kwargs: FakeHistogram(self, *args, **kwargs)
        return module

    def define_all(self) -> dict[str, FakeMetric]:
        """Create one of every metric class; every metric raylsm defines, by name."""
        for module_name, classes in METRIC_CLASSES.items():
            for class_name, args in classes.items():
                getattr(self.modules[module_name], class_name)(*args)
        return self.defined


@pytest.fixture
def ray_metrics(no_ray, monkeypatch):
    """raylsm's metric modules, freshly imported against a fake `ray.util.metrics` (removed again
    after the test, so that no other test sees the fake)."""
    recorder = RayMetricsRecorder()
    util = types.ModuleType("ray.util")
    util.metrics = recorder.module()
    no_ray.util = util
    monkeypatch.setitem(sys.modules, "ray.util", util)
    monkeypatch.setitem(sys.modules, "ray.util.metrics", util.metrics)
    saved = {name: sys.modules.pop(name, None) for name in METRIC_CLASSES}
    try:
        recorder.modules = {name: importlib.import_module(name) for name in METRIC_CLASSES}
        yield recorder
    finally:
        for name, module in saved.items():
            sys.modules.pop(name, None)
            if module is not None:
                sys.modules[name] = module
