"""Unit tests run without Ray: any attempt to start or join a Ray cluster fails loudly."""

from __future__ import annotations

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
