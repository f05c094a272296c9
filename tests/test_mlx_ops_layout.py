"""The MLX-ops update keeps small values small: under ``mx.compile`` MLX fuses elementwise
arithmetic on a small array into the full-size loop that reads it and recomputes it for
every element, so no full-size elementwise node may read small arithmetic directly
(only through a view of something MLX does not fuse: a reduction, an input, ``[..., None]``
or ``_rt.once``)."""
from __future__ import annotations

import importlib
import math

import pytest

from afgen.report.mlx_graph import optimizer_graph

# MLX's fusable primitives (mlx/compile.cpp: is_unary, is_binary, is_ternary).
FUSED = frozenset({
    "Abs", "ArcCos", "ArcCosh", "ArcSin", "ArcSinh", "ArcTan", "ArcTanh", "AsType", "Ceil",
    "Cos", "Conjugate", "Cosh", "Remainder", "Erf", "ErfInv", "Exp", "Floor", "Log", "Log1p",
    "LogicalNot", "Negative", "Round", "Sigmoid", "Sign", "Sin", "Sinh", "Square", "Sqrt",
    "Tan", "Tanh", "Expm1", "Add", "Divide", "Equal", "Greater", "GreaterEqual", "Less",
    "LessEqual", "LogicalAnd", "LogicalOr", "LogAddExp", "Maximum", "Minimum", "Multiply",
    "NotEqual", "Power", "Subtract", "ArcTan2", "Select"})

CASES = [("adafactor", "Adafactor", {}, (48, 32)),
         ("adafactor", "Adafactor", {"beta_1": 0.9, "weight_decay": 0.01}, (3, 48, 32)),
         ("adafactor", "Adafactor", {}, (40,)),
         ("adafactor_torch", "AdafactorTorch", {}, (48, 32)),
         ("adafactor_optax", "AdafactorOptax", {}, (48, 32)),
         ("adafactor_paper", "AdafactorPaper", {}, (48, 32)),
         ("adam", "Adam", {"learning_rate": 1e-3}, (48, 32)),
         ("adamw", "AdamW", {"learning_rate": 1e-3}, (40,))]


def _class(stem: str, name: str):
    module = importlib.import_module(f"generated.{stem}")
    return getattr(module, name, None) or next(
        v for v in vars(module).values()
        if isinstance(v, type) and v.__module__ == module.__name__)


@pytest.mark.parametrize("stem,name,options,shape", CASES)
def test_no_small_arithmetic_is_fused_into_a_full_size_loop(stem, name, options, shape):
    opt = _class(stem, name)(backend="mlx", **options)
    nodes = optimizer_graph(opt, shape)
    made_by = {out: node for node in nodes for out in node.output_names}
    full = math.prod(shape)  # the float32 twins view a matrix as (1, M, N)
    checked = 0
    for node in nodes:
        if node.primitive not in FUSED or math.prod(node.outputs[0][0]) != full:
            continue
        for source in node.input_names:
            producer = made_by.get(source)
            while producer is not None and producer.primitive == "Broadcast":
                producer = made_by.get(producer.input_names[0])
            if producer is None or math.prod(producer.outputs[0][0]) == full:
                continue
            checked += 1
            assert producer.primitive not in FUSED, (
                f"{producer.primitive} of shape {producer.outputs[0][0]} feeds the "
                f"full-size {node.primitive}: MLX would recompute it per element")
    assert checked, "no small value meets a full-size one: the test checks nothing"
