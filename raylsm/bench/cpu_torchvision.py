"""torchvision on this project's CPU torch: the one import recipe, for benches and tests.

SGLang's host pools, controllers and `MooncakeStore` import transformers, which imports torchvision.
The torchvision wheels are built against a CUDA torch: their C++ ops (`_C.so`) need libtorch_cuda.so
and do not load into a CPU torch, and then `torchvision/_meta_registrations.py` fails with "operator
torchvision::nms does not exist". `make venv` therefore installs torchvision outside site-packages
(`TORCHVISION_DIR`, Makefile TORCHVISION_DIR), and `import_torchvision()` puts it on sys.path and
declares the schemas of `nms` and `qnms` (no kernels) so that the import finishes; SGLang only needs
`torchvision.transforms`, which is Python. Where torchvision's own ops load (a GPU server), nothing
is declared. docs/install.md, "torchvision on a CPU torch", has the why.

Called by `raylsm.bench.mooncake`, `raylsm.bench.fleet_replica`, `raylsm.bench.tier_clients` and the
tests that import SGLang's real classes. Process-wide state (sys.path, one torch Library).
"""

from __future__ import annotations

import sys
from pathlib import Path

TORCHVISION_DIR = Path(sys.prefix) / "cpu-torchvision"
_torchvision_ops = None  # the op schemas declared for torchvision (a torch Library dies with its object)


def import_torchvision() -> None:
    """Import torchvision (the process's own, else TORCHVISION_DIR's), declaring on a CPU torch the two
    ops its import registers fake kernels for. Raises what the import raises for any other reason."""
    global _torchvision_ops
    import torch

    while True:
        try:
            import torchvision  # noqa: F401
            return
        except ModuleNotFoundError as error:
            if error.name != "torchvision" or str(TORCHVISION_DIR) in sys.path or not TORCHVISION_DIR.is_dir():
                raise
            sys.path.append(str(TORCHVISION_DIR))
        except RuntimeError as error:
            if "torchvision::" not in str(error) or _torchvision_ops is not None:
                raise
            _torchvision_ops = torch.library.Library("torchvision", "DEF")
            _torchvision_ops.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _torchvision_ops.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


def forget_inherited_torchvision() -> None:
    """Take TORCHVISION_DIR off sys.path. For a process started with multiprocessing's spawn: it
    inherits its parent's sys.path, and a parent that put the CPU torchvision there (the test suite
    does) would make the child's `import sglang` (through transformers) import it without its op
    schemas declared, and fail ("operator torchvision::nms does not exist"). What needs torchvision
    (`import_torchvision`) puts it back with the recipe."""
    sys.path[:] = [entry for entry in sys.path if Path(entry) != TORCHVISION_DIR]
