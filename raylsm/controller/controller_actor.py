"""The controller as a named, detached Ray actor running the reconcile loop in a thread.

Called by `raylsm up` / tests (`start_controller`) and by clients (`get_controller`). The actor is
threaded so that `ring()` and `status()` answer while the loop runs.
"""

from __future__ import annotations

import logging
import threading

import ray

from raylsm.config import CONTROLLER_NAME, TierConfig
from raylsm.controller.controller import Controller

logger = logging.getLogger(__name__)


class ControllerServer:
    def __init__(self, config: TierConfig):
        self._controller = Controller(config)
        self._period_s = config.controller.reconcile_period_s
        self._stop = threading.Event()
        self._controller.reconcile_once()
        self._thread = threading.Thread(target=self._loop, name="raylsm-reconcile", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):
            self._controller.reconcile_once()

    def reconcile_now(self) -> dict:
        self._controller.reconcile_once()
        return self._controller.ring()

    def ring(self, splits_version: int = -1) -> dict:
        return self._controller.ring(splits_version)

    def status(self) -> dict:
        return self._controller.status()

    def namespace_table(self) -> dict:
        return self._controller.namespace_table()

    def clear_namespace(self, base_id: bytes, timeout_s: float = 10.0) -> dict:
        return self._controller.clear_namespace(base_id, timeout_s)

    def shutdown(self) -> int:
        self._stop.set()
        return self._controller.shutdown_shards()


ControllerActor = ray.remote(ControllerServer)


def start_controller(config: TierConfig):
    """Create the controller (or return the running one)."""
    return ControllerActor.options(
        name=CONTROLLER_NAME, namespace=config.ray_namespace, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=8, num_cpus=0,
    ).remote(config)


def get_controller(namespace: str):
    """The running controller's handle; ValueError if there is none."""
    return ray.get_actor(CONTROLLER_NAME, namespace=namespace)
