"""Kernel dispatches of one optimizer step over a whole model tree: afgen vs MLX's own.

A tree of hundreds of small tensors is bound by launch overhead, not bandwidth, so this
counts what a step launches, eager and under ``mx.compile``, for trees with the tensor
count and layout of Llama-7B (291 tensors) and GPT-2 125M (148 tensors). Counting needs
no GPU: the graph is MLX's own lazy graph of the step (afgen.report.mlx_graph explains
why that graph and how fused kernel launches are stood in for), so the sizes are scaled
down; only the number of tensors and their ranks decide the count.

    python benchmarks/bench_dispatch.py [--smoke]

Columns: dispatches per step and per tensor; for a fused backend, ``kernels`` are afgen's
kernel launches and ``glue`` the MLX ops launched around them (Compiled groups included).

A fused step updates same-shape tensors of up to ``STACK_MAX_ELEMENTS`` elements as one
stack (afgen_runtime): the row "afgen Adafactor (fused)" stacks what the default limit
stacks at the model's full size; the two rows below it stack every tensor, and none.
Stacking copies each gradient, parameter and state into the stack: MLX's GPU backends run
a concatenation as one copy per input, so each copy is counted as a dispatch.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import generated.adafactor as afgen_adafactor  # noqa: E402
import generated.adam as afgen_adam  # noqa: E402
from afgen.report.mlx_graph import (  # noqa: E402
    Dispatches,
    kernel_stand_ins,
    step_dispatches,
)


def llama_tree(layers: int = 32, d: int = 64, ff: int = 172, vocab: int = 320) -> dict:
    """Llama-7B's layout (embedding, per layer q,k,v,o, gate,up,down and two norms, final
    norm, lm_head: 3 + 9 * layers tensors, 291 for 32 layers) at small sizes.

    Every matrix has more rows than one row block of the fused kernels (32), so the glue
    that adds partial sums across blocks is there as in a full-size model; a matrix of
    one block skips some of it and would count fewer dispatches."""
    shapes = {"embed_tokens": (vocab, d)}
    for i in range(layers):
        shapes.update({f"layers.{i}.self_attn.{n}_proj": (d, d) for n in "qkvo"})
        shapes.update({f"layers.{i}.mlp.gate_proj": (ff, d), f"layers.{i}.mlp.up_proj": (ff, d),
                       f"layers.{i}.mlp.down_proj": (d, ff),
                       f"layers.{i}.input_layernorm": (d,),
                       f"layers.{i}.post_attention_layernorm": (d,)})
    shapes.update({"norm": (d,), "lm_head": (vocab, d)})
    return shapes


def gpt2_tree(layers: int = 12, d: int = 96, vocab: int = 785, context: int = 128) -> dict:
    """GPT-2 125M's layout (token and position embeddings, per layer two LayerNorms with
    bias, fused qkv, attention projection and MLP with biases, final LayerNorm; the head
    is tied: 4 + 12 * layers tensors, 148 for 12 layers) at 1/8 width and 1/64 vocab
    (every matrix still spans several row blocks, see :func:`llama_tree`)."""
    shapes = {"wte": (vocab, d), "wpe": (context, d)}
    for i in range(layers):
        h = f"h.{i}"
        shapes.update({f"{h}.ln_1.weight": (d,), f"{h}.ln_1.bias": (d,),
                       f"{h}.attn.c_attn.weight": (d, 3 * d), f"{h}.attn.c_attn.bias": (3 * d,),
                       f"{h}.attn.c_proj.weight": (d, d), f"{h}.attn.c_proj.bias": (d,),
                       f"{h}.ln_2.weight": (d,), f"{h}.ln_2.bias": (d,),
                       f"{h}.mlp.c_fc.weight": (d, 4 * d), f"{h}.mlp.c_fc.bias": (4 * d,),
                       f"{h}.mlp.c_proj.weight": (4 * d, d), f"{h}.mlp.c_proj.bias": (d,)})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


@dataclass(frozen=True)
class Tree:
    """A tree to count at small sizes, and the same layout at the model's own sizes: a
    fused step stacks the tensors the default ``STACK_MAX_ELEMENTS`` would stack at full
    size (see :func:`stack_limit`)."""

    small: Callable[[], dict]
    full: Callable[[], dict]


TREES = {
    "llama-7b layout": Tree(llama_tree, partial(llama_tree, d=4096, ff=11008, vocab=32000)),
    "gpt2-125m layout": Tree(gpt2_tree, partial(gpt2_tree, d=768, vocab=50257, context=1024)),
}
SMOKE_TREES = {"llama layout, 2 layers": Tree(partial(llama_tree, 2),
                                              partial(llama_tree, 2, 4096, 11008, 32000))}


def stack_limit(tree: Tree) -> int:
    """The stacking limit that, at the small sizes, stacks exactly the tensors the default
    limit stacks at full size (the counts then are those of the full-size model)."""
    default = afgen_adafactor._rt.STACK_MAX_ELEMENTS
    small, full = tree.small(), tree.full()
    sizes = {name: (math.prod(small[name]), math.prod(full[name])) for name in small}
    stacked = [s for s, f in sizes.values() if f <= default]
    alone = [s for s, f in sizes.values() if f > default]
    limit = max(stacked, default=0)
    if alone and min(alone) <= limit:
        raise ValueError("the small tree does not keep the full-size order of tensor sizes")
    return limit


@dataclass(frozen=True)
class Contender:
    """An optimizer as the table names it: how to build it, the module whose kernels it
    launches (None: MLX ops only) and which tensors a fused step stacks: as at full size
    (``"default"``), ``"all"`` or ``"none"``."""

    label: str
    make: object
    fused_module: object = None
    stacks: str = "default"


CONTENDERS = [
    Contender("afgen Adafactor (mlx)", partial(afgen_adafactor.Adafactor, backend="mlx")),
    Contender("afgen Adafactor (fused)", partial(afgen_adafactor.Adafactor, backend="metal"),
              afgen_adafactor),
    Contender("  stacking every size", partial(afgen_adafactor.Adafactor, backend="metal"),
              afgen_adafactor, "all"),
    Contender("  stacking none", partial(afgen_adafactor.Adafactor, backend="metal"),
              afgen_adafactor, "none"),
    Contender("mlx.optimizers.Adafactor", optim.Adafactor),
    Contender("afgen Adam (mlx)", partial(afgen_adam.Adam, 1e-3, backend="mlx")),
    Contender("afgen Adam (fused)", partial(afgen_adam.Adam, 1e-3, backend="metal"), afgen_adam),
    Contender("mlx.optimizers.Adam", partial(optim.Adam, 1e-3)),
]


def zeros_tree(shapes: dict) -> dict:
    """Parameters and gradients for counting: the values do not change the graph."""
    return {name: mx.zeros(shape) for name, shape in shapes.items()}


def count(contender: Contender, tree: Tree, compiled: bool) -> Dispatches:
    """Dispatches of one step of ``contender`` over ``tree`` (at its small sizes)."""
    shapes = tree.small()
    params, grads = zeros_tree(shapes), zeros_tree(shapes)
    module = contender.fused_module
    if module is None:
        return step_dispatches(contender.make(), params, grads, compiled=compiled)
    runtime = module._rt
    default = runtime.STACK_MAX_ELEMENTS
    runtime.STACK_MAX_ELEMENTS = {"all": 1 << 62, "none": 0}.get(contender.stacks,
                                                                  stack_limit(tree))
    try:
        # The fused backend is chosen while the stand-ins are installed (it needs a
        # device or a kernel runner to be accepted).
        with kernel_stand_ins(module) as stand_ins:
            return step_dispatches(contender.make(), params, grads, compiled=compiled,
                                   stand_ins=stand_ins)
    finally:
        runtime.STACK_MAX_ELEMENTS = default


def print_table(trees: dict[str, Tree]) -> None:
    print(f"MLX {mx.__version__}: kernel dispatches per optimizer step (views excluded; a "
          "Compiled group counts once, a Concatenate once per input)")
    header = (f"{'optimizer':<26} {'mode':<9} {'per step':>9} {'per tensor':>11} "
              f"{'kernels':>8} {'glue':>6}")
    for tree_name, tree in trees.items():
        shapes = tree.small()
        stacked = sum(math.prod(s) <= afgen_adafactor._rt.STACK_MAX_ELEMENTS
                      for s in tree.full().values())
        print(f"\n{tree_name}: {len(shapes)} tensors, {stacked} of them small enough to "
              f"stack at full size")
        print(header)
        for contender in CONTENDERS:
            for compiled in (False, True):
                d = count(contender, tree, compiled)
                mode = "compiled" if compiled else "eager"
                fused = contender.fused_module is not None
                split = f"{d.kernels:>8} {d.total - d.kernels:>6}" if fused else f"{'':>8} {'':>6}"
                print((f"{contender.label:<26} {mode:<9} {d.total:>9} "
                       f"{d.per_tensor(len(shapes)):>11.1f} " + split).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one tiny tree (a quick check)")
    args = parser.parse_args()
    print_table(SMOKE_TREES if args.smoke else TREES)


if __name__ == "__main__":
    main()
