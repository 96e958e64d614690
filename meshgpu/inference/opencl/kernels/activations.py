"""OpenCL expressions of the clamp-like activations, shared by every kernel that applies one.

Each takes the operand's source text (a ``float`` or ``float8`` expression without side
effects) and returns an expression valid on both. They are written as comparisons that let
NaN through: a comparison with NaN is false, so the input itself is returned, as
onnxruntime does (``x > 0 ? x : 0`` and ``fmax``/``fmin`` turned NaN into a number, so a
NaN from a bad input left a model as a plausible value). -0.0 compares equal to 0 and so
passes through unchanged, also as onnxruntime gives it.
"""

from __future__ import annotations


def relu(x: str) -> str:
    """max(x, 0) keeping NaN and -0.0 (ONNX Relu)."""
    return f"({x} < 0.0f ? 0.0f : {x})"


def leaky_relu(x: str, alpha: str) -> str:
    """x for x >= 0, alpha * x below (ONNX LeakyRelu); NaN stays NaN through the product."""
    return f"({x} < 0.0f ? {alpha} * {x} : {x})"


def clamp(x: str, low: str, high: str) -> str:
    """x limited to [low, high] keeping NaN (ONNX Clip; OpenCL's ``clamp`` is fmin(fmax())
    and drops it)."""
    return f"({x} < {low} ? {low} : ({x} > {high} ? {high} : {x}))"
