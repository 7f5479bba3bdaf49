"""The controller as a named, detached Ray actor running the reconcile loop in a thread.

Called by `raylsm up` / tests (`start_controller`) and by clients (`get_controller`). The actor is
threaded so that `ring()` and `status()` answer while the loop runs. A second thread exports the
controller's metrics (raylsm.controller.metrics) every EXPORT_PERIOD_S, off the reconcile loop.
"""

from __future__ import annotations

import logging
import threading

import ray

from raylsm.config import CONTROLLER_NAME, TierConfig
from raylsm.controller.controller import Controller
from raylsm.controller.metrics import EXPORT_PERIOD_S, ControllerMetrics

logger = logging.getLogger(__name__)


class ControllerServer:
    def __init__(self, config: TierConfig):
        self._controller = Controller(config)
        self._period_s = config.controller.reconcile_period_s
        self._stop = threading.Event()
        self._controller.reconcile_once()
        self._thread = threading.Thread(target=self._loop, name="raylsm-reconcile", daemon=True)
        self._thread.start()
        self._metrics_thread = threading.Thread(target=self._export_loop, name="raylsm-controller-metrics",
                                                daemon=True)
        self._metrics_thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):
            self._controller.reconcile_once()

    def _export_loop(self) -> None:
        metrics = ControllerMetrics()
        splits_version = -1  # the split extents' version last seen: ring() sends the extents only when it moves
        while True:
            try:
                ring = self._controller.ring(splits_version)
                if ring["splits"] is not None:
                    splits_version = ring["splits"]["version"]
                metrics.export(self._controller.status(), ring)
            except Exception:  # metrics must never stop the controller
                logger.exception("controller metrics export failed")
            if self._stop.wait(EXPORT_PERIOD_S):
                return

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

    def scale(self, shards: int, drain: bool | None = None) -> dict:
        return self._controller.scale(shards, drain)

    def scale_status(self) -> dict:
        return self._controller.scale_status()

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
