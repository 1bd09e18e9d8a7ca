"""The dynamo exporter's op registry, built once per process instead of once per export.

`torch.onnx.export(dynamo=True)` rebuilds its registry of torchlib functions on every call: about 0.9 s of
reading and parsing ~500 onnxscript sources, longer than tracing and converting one of kdverify's models. A
process that exports several graphs (fp32 and int8 of teacher and student, the benchmarks, the tests) pays it
once per opset with `registry_built_once()` around its exports. Each export gets its own copy of the function
table, so a caller that registers custom ops never changes what the next export sees; the graphs are identical
byte for byte (tested). Where torch's private layout differs from the one this was written against, exports run
unchanged and simply rebuild the registry.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

_BUILT: dict[tuple, Any] = {}


def _registration_module():
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    registry = getattr(_registration, "ONNXRegistry", None)
    if registry is None or not isinstance(registry.__dict__.get("from_torchlib"), classmethod):
        return None
    return _registration


def _copy_of(registry: Any) -> Any:
    fresh = copy.copy(registry)
    fresh.functions = {target: list(metas) for target, metas in registry.functions.items()}
    return fresh


@contextlib.contextmanager
def registry_built_once() -> Iterator[None]:
    """Within the block, the exporter's `ONNXRegistry.from_torchlib(opset)` is built on first use and copied after."""
    module = _registration_module()
    if module is None:
        yield
        return
    original = module.ONNXRegistry.__dict__["from_torchlib"]

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _BUILT:
            _BUILT[key] = original.__func__(cls, *args, **kwargs)
        return _copy_of(_BUILT[key])

    module.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        module.ONNXRegistry.from_torchlib = original
