"""TensorFlow's protobuf modules without TensorFlow.

`tensorflow_serving.apis` imports `tensorflow.core.framework.*_pb2`, and importing any module
under `tensorflow` first runs `tensorflow/__init__.py`, which loads all of TensorFlow (1.7 s and
about 500 MB here). A front-end worker needs the generated message classes only, so it puts a
placeholder `tensorflow` package in `sys.modules` whose search path is the real one: the `_pb2`
modules import from the installed files, and `tensorflow/__init__.py` never runs. Touching any
other attribute of `tensorflow` (a rare request path that needs TensorFlow itself, such as
`tf.make_ndarray` for a broadcast tensor) imports the real package then, once, and answers from it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from typing import Any

log = logging.getLogger("modelserver.workers")


class _Placeholder(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        log.info("importing TensorFlow in this worker (tensorflow.%s was asked for)", name)
        del sys.modules["tensorflow"]
        real = importlib.import_module("tensorflow")
        return getattr(real, name)


def without_tensorflow() -> bool:
    """Installs the placeholder (before anything imports `tensorflow`); False when TensorFlow is
    already imported or not installed."""
    if "tensorflow" in sys.modules:
        return False
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return False
    stub = _Placeholder("tensorflow")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec
    sys.modules["tensorflow"] = stub
    return True
