"""onnx's pytorch-converted, pytorch-operator and simple model suites on the OpenCL backend.

Each case passes, or is skipped naming the unsupported operator; anything else is a
failure. The counts are printed at the end of the run (see conftest.py). The onnx runner
also generates CUDA variants of every case; they are dropped here rather than reported as
skips, because the device is not what is being tested.
"""

from __future__ import annotations

import onnx.backend.test
import pytest

from .onnx_backend import MeshgpuBackend

pytestmark = [pytest.mark.conformance]

SUITES = {
    "OnnxBackendNodeModelTest": "node",
    "OnnxBackendPyTorchConvertedModelTest": "pytorch-converted",
    "OnnxBackendPyTorchOperatorModelTest": "pytorch-operator",
    "OnnxBackendSimpleModelTest": "simple",
}

_cases = onnx.backend.test.BackendTest(MeshgpuBackend, __name__).test_cases
for _class_name in SUITES:
    _case = _cases[_class_name]
    for _attribute in list(vars(_case)):
        if _attribute.startswith("test_") and _attribute.endswith("_cuda"):
            delattr(_case, _attribute)
    globals()[_class_name] = _case
del _case, _cases, _class_name
