"""Memory traffic of an MLX computation, counted from MLX's own graph.

afgen's plan report compares the bytes its fused kernels move with what a stock MLX
optimizer (``mlx.optimizers.Adafactor``) moves when MLX runs it eagerly. Counting that by
hand from the optimizer's Python source goes stale whenever MLX changes an op's lowering
(``mx.mean`` is a ``Reduce`` plus a ``Multiply`` by ``1/n``, ``mx.rsqrt`` is a ``Sqrt``
with a flag, broadcasting inserts ``Broadcast`` views), so the graph is taken from MLX.

Where the graph comes from
--------------------------
``mx.export_function(file, fn, *args)`` writes a ``.mlxfn`` file with every array's shape
and dtype, but that binary format is not self-describing: each primitive's state is
written by C++ templates with no length prefix, so a reader must know the exact state
layout of every primitive that can appear (about 120 of them), the header changed within
0.32.x (a metadata string was added in 0.32.1), and array ids are raw heap addresses.
An unknown primitive would make the rest of the file unreadable.

``mx.export_function`` also accepts a *callable* instead of a path (public API since MLX
0.29.3). MLX then traces ``fn`` exactly as it does for a file and hands the callable one
dict per record: the inputs, the outputs, the constants and, per primitive of the tape in
topological order, its name, its decoded state (``arguments``) and its input and output
arrays as ``(name, shape, dtype)``. That is the same graph the file holds, already
decoded by MLX itself, so no version-specific byte layout is parsed here. The payload is
still checked strictly: an unknown record type, a missing key or an input used before it
is defined raises :class:`MlxGraphError` instead of being guessed around.

The graph is the one MLX exports: traced, then simplified by MLX's compiler (3 passes of
common-subexpression elimination and scalar-constant merging), but not fused. Eager
evaluation would compute a duplicated subexpression twice; in optimizer updates those are
scalars, so the effect on traffic is a few bytes.

How traffic is counted
----------------------
:func:`graph_traffic` models an eager, unfused evaluation: every primitive that runs a
kernel reads each of its inputs once and writes each of its outputs once.

* **Views launch nothing and move nothing.** MLX evaluates these by sharing the input's
  buffer with new strides (``copy_shared_buffer`` in ``mlx/backend/common/common.cpp``
  and ``mlx/backend/cpu/primitives.cpp``): ``Broadcast``, ``BroadcastAxes``,
  ``ExpandDims``, ``Squeeze``, ``Transpose``, ``Slice``, ``Split``, ``AsStrided``,
  ``StopGradient``, ``Depends`` and ``Copy`` (which MLX also implements as a buffer
  share).
* **Reshape-like primitives are views only of a row-contiguous input.** ``Reshape``,
  ``Flatten``, ``Unflatten``, ``Contiguous`` and ``View`` (``View`` also when the dtype
  size is unchanged) share the buffer when the input is row-contiguous; otherwise they
  count as a copy kernel. Contiguity is tracked through the views above. MLX's
  ``prepare_reshape`` avoids some copies of non-contiguous inputs (when the reshape only
  splits or merges compatible dimensions); this model counts those as copies, which errs
  towards more traffic and only for reshapes of transposed, strided or broadcast views.
* **Everything else is a kernel**, including primitives this module has never seen:
  the safe default for an unknown primitive is that it reads and writes memory.
* **A view is read at the size of what it points at.** An eager elementwise kernel reads a
  broadcast input through zero strides, so the small source is fetched from memory once
  and then served from cache; its bytes are those of the source (a ``()`` float32
  constant broadcast to ``(4096, 4096)`` costs 4 bytes, a ``(4096,)`` row vector 16 KiB).
  In general a view's read size is ``min(its own bytes, its source's read size)``, which
  gives the source size for a broadcast, the same size for a reshape or transpose, and the
  slice's own size for a slice.
* **An array read twice by one kernel is counted once** (``a * a`` reads ``a`` once):
  both operands stream the same addresses in the same order.
* **Constants and function inputs** are materialized arrays of their own size; scalar
  constants therefore add their (tiny) size to every kernel that reads them.

Nodes made by :func:`mlx_graph` carry the names MLX gives its arrays, which is how views
are followed to their sources. Nodes built by hand without names are counted as if every
input were a materialized array of its own shape (no views can be resolved).

How dispatches are counted
--------------------------
:func:`step_dispatches` counts the kernel launches of one optimizer step over a whole tree,
eager or under ``mx.compile``, on a different graph: the lazy graph the step leaves behind
(:func:`lazy_graph`, from ``mx.export_to_dot``), because the exported trace merges the
per-tensor duplicates an eager step really launches and is never fused. Views are not
counted, a ``Compiled`` group counts once, and a fused backend's kernel launches are stood
in for by :class:`KernelStandIns`. The section "Counting dispatches" below says why.
"""
from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

Port = tuple[tuple[int, ...], str]
"""An array as the graph sees it: ``(shape, dtype name)``, e.g. ``((64, 32), "float32")``."""

DTYPE_SIZES: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
}
"""Bytes per element of MLX's dtypes, by the names :class:`GraphNode` uses."""

PER_INPUT_PRIMITIVES: frozenset[str] = frozenset({"Concatenate"})
"""Primitives whose GPU evaluation launches one kernel per input: MLX's
``concatenate_gpu`` (``mlx/backend/metal/slicing.cpp``, ``mlx/backend/cuda/slicing.cpp``)
copies each input into its slice of the output with a copy kernel of its own."""

VIEW_PRIMITIVES: frozenset[str] = frozenset({
    "AsStrided", "Broadcast", "BroadcastAxes", "Copy", "Depends", "ExpandDims", "Slice",
    "Split", "Squeeze", "StopGradient", "Transpose",
})
"""Primitives MLX always evaluates by sharing the input buffer (no kernel, no bytes)."""

RESHAPE_PRIMITIVES: frozenset[str] = frozenset({
    "Contiguous", "Flatten", "Reshape", "Unflatten", "View",
})
"""Primitives that share the buffer of a row-contiguous input and copy otherwise."""

_CALLBACK_RECORDS = ("inputs", "keyword_inputs", "outputs", "constants")


class MlxGraphError(RuntimeError):
    """MLX handed back a graph whose structure this module does not understand."""


@dataclass(frozen=True)
class GraphNode:
    """One primitive of an MLX graph.

    ``primitive`` is MLX's serialization name (``"Reduce"`` covers sum/max/...,
    ``"Sqrt"`` covers rsqrt; ``arguments`` tells them apart). Only ``primitive``,
    ``inputs`` and ``outputs`` take part in equality, so a node list can be compared with a
    hand-written one; the names and arguments are kept for following views to their
    sources and for reports.
    """

    primitive: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    input_names: tuple[str, ...] = field(default=(), compare=False)
    output_names: tuple[str, ...] = field(default=(), compare=False)
    arguments: tuple[Any, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Traffic:
    """What an eager evaluation of a graph costs in kernel launches and memory traffic."""

    launches: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes_total(self) -> int:
        """Bytes read plus bytes written: the figure a bandwidth-bound kernel pays for."""
        return self.bytes_read + self.bytes_written

    def per_element(self, n: int) -> float:
        """Total bytes per element of an ``n``-element parameter, for comparing plans."""
        return self.bytes_total / n


def dtype_size(dtype: str) -> int:
    """Bytes per element of an MLX dtype name; raises on a name MLX does not have."""
    try:
        return DTYPE_SIZES[dtype]
    except KeyError:
        raise MlxGraphError(f"unknown MLX dtype {dtype!r}") from None


def port_nbytes(port: Port) -> int:
    """Bytes of a materialized array of the port's shape and dtype."""
    shape, dtype = port
    return prod(shape) * dtype_size(dtype)


# ---------------------------------------------------------------------------------------
# Reading the graph from MLX


def _dtype_name(dtype: Any) -> str:
    import mlx.core as mx

    if not isinstance(dtype, mx.Dtype):
        raise MlxGraphError(f"expected an mlx.core.Dtype in the export record, got {dtype!r}")
    name = str(dtype).rsplit(".", 1)[-1]
    dtype_size(name)
    if DTYPE_SIZES[name] != dtype.size:
        raise MlxGraphError(f"dtype {name} has {dtype.size} bytes, expected {DTYPE_SIZES[name]}")
    return name


def _arrays(record: dict, key: str) -> list[tuple[str, Port]]:
    """``[(name, (shape, dtype))]`` from one ``(name, shape, dtype)`` list of a record."""
    try:
        entries = record[key]
    except KeyError:
        raise MlxGraphError(f"export record {record.get('type')!r} has no {key!r}") from None
    out = []
    for entry in entries:
        if not (isinstance(entry, tuple) and len(entry) == 3):
            raise MlxGraphError(f"expected (name, shape, dtype) in {key!r}, got {entry!r}")
        name, shape, dtype = entry
        if not isinstance(name, str) or not all(isinstance(d, int) for d in shape):
            raise MlxGraphError(f"malformed array entry {entry!r} in {key!r}")
        out.append((name, (tuple(shape), _dtype_name(dtype))))
    return out


def _freeze(value: Any) -> Any:
    """Primitive state as hashable values (lists to tuples, dtypes to their names)."""
    import mlx.core as mx

    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, mx.Dtype):
        return _dtype_name(value)
    return value


def mlx_graph(fn: Callable[..., Any], *args: Any) -> list[GraphNode]:
    """Export fn(*args) (mx arrays) and return its primitive nodes in topological order.

    The graph comes from ``mx.export_function`` with a callback (see the module docstring
    for why this beats parsing the ``.mlxfn`` file). ``fn`` is traced, not run, so it may
    mutate Python state (e.g. an optimizer's ``state["step"]``) as it would in training.
    It must return an array or a tuple/list of arrays.
    """
    import mlx.core as mx

    for i, a in enumerate(args):
        if not isinstance(a, mx.array):
            raise TypeError(f"mlx_graph: argument {i} is {type(a).__name__}, not mx.array")

    records: list[dict] = []

    def collect(record: dict) -> None:
        records.append(dict(record))

    mx.export_function(collect, fn, *args)

    kinds = [r.get("type") for r in records]
    if tuple(kinds[:4]) != _CALLBACK_RECORDS:
        raise MlxGraphError(
            f"unexpected export record sequence {kinds[:4]} (MLX {mx.__version__}); "
            f"expected {list(_CALLBACK_RECORDS)} followed by primitives"
        )

    defined: set[str] = {name for name, _ in _arrays(records[0], "inputs")}
    const = records[3].get("constants")
    if const is None:
        raise MlxGraphError("export record 'constants' has no 'constants'")
    defined.update(name for name, _ in const)

    nodes: list[GraphNode] = []
    for record in records[4:]:
        if record.get("type") != "primitive":
            raise MlxGraphError(f"unexpected export record type {record.get('type')!r}")
        name = record.get("name")
        if not isinstance(name, str) or not name:
            raise MlxGraphError(f"primitive record without a name: {record!r}")
        ins = _arrays(record, "inputs")
        outs = _arrays(record, "outputs")
        if not outs:
            raise MlxGraphError(f"primitive {name} has no outputs")
        for in_name, _ in ins:
            if in_name not in defined:
                raise MlxGraphError(
                    f"primitive {name} reads {in_name!r} before it is defined; "
                    "the tape is not in topological order"
                )
        defined.update(n for n, _ in outs)
        nodes.append(GraphNode(
            primitive=name,
            inputs=tuple(p for _, p in ins),
            outputs=tuple(p for _, p in outs),
            input_names=tuple(n for n, _ in ins),
            output_names=tuple(n for n, _ in outs),
            arguments=_freeze(record.get("arguments", ())),
        ))

    for out_name, _ in _arrays(records[2], "outputs"):
        if out_name not in defined:
            raise MlxGraphError(f"function output {out_name!r} is produced by no primitive")
    return nodes


# ---------------------------------------------------------------------------------------
# Counting traffic


@dataclass
class _Buffer:
    """How a kernel sees an array: bytes to read it, and whether it is row-contiguous."""

    read_bytes: int
    contiguous: bool


def _contiguous_block(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """Whether a unit-stride sub-block of a row-contiguous array is row-contiguous.

    It is when only one axis is partial and every axis before it has size 1 in the block.
    """
    if len(in_shape) != len(out_shape):
        return False
    partial = [i for i, (a, b) in enumerate(zip(in_shape, out_shape)) if a != b]
    if not partial:
        return True
    last = partial[-1]
    return all(out_shape[i] == 1 for i in range(last))


def _view_contiguous(node: GraphNode, src: _Buffer, out: Port) -> bool:
    """Whether a view's output is row-contiguous (decides whether a reshape copies)."""
    if not src.contiguous:
        return False
    in_shape = node.inputs[0][0]
    out_shape = out[0]
    p = node.primitive
    if p in ("Broadcast", "BroadcastAxes"):
        return prod(in_shape) == prod(out_shape)
    if p == "Transpose":
        axes = node.arguments[0] if node.arguments else None
        if axes is None or len(axes) != len(in_shape):
            return False
        moved = [a for a in axes if in_shape[a] != 1]
        return moved == sorted(moved)
    if p == "Slice":
        strides = node.arguments[2] if len(node.arguments) == 3 else None
        if strides is None or any(s != 1 and n > 1 for s, n in zip(strides, out_shape)):
            return False
        return _contiguous_block(in_shape, out_shape)
    if p == "Split":
        return _contiguous_block(in_shape, out_shape)
    if p == "AsStrided":
        return False
    return True  # ExpandDims, Squeeze, StopGradient, Depends, Copy keep the layout


def graph_traffic(nodes: list[GraphNode]) -> Traffic:
    """Bytes an eager (unfused) evaluation moves: every kernel-running primitive reads its
    inputs and writes its outputs.

    This is the baseline a fused kernel is compared with: what MLX pays when each
    primitive is its own kernel and every intermediate round-trips through memory. The
    rules (which primitives are views, how broadcast inputs are charged) are in the module
    docstring.
    """
    buffers: dict[str, _Buffer] = {}
    anon = 0
    launches = bytes_read = bytes_written = 0

    def names(given: tuple[str, ...], ports: tuple[Port, ...]) -> tuple[str, ...]:
        # Unnamed (hand-built) ports get fresh names: each is its own materialized array.
        nonlocal anon
        if given:
            if len(given) != len(ports):
                raise MlxGraphError(f"{len(given)} names for {len(ports)} arrays")
            return given
        anon += len(ports)
        return tuple(f"#unnamed{anon - len(ports) + i}" for i in range(len(ports)))

    def buffer(name: str, port: Port) -> _Buffer:
        if name not in buffers:  # a function input or a constant: materialized
            buffers[name] = _Buffer(port_nbytes(port), True)
        return buffers[name]

    for node in nodes:
        in_names = names(node.input_names, node.inputs)
        out_names = names(node.output_names, node.outputs)
        srcs = [buffer(n, p) for n, p in zip(in_names, node.inputs)]
        p = node.primitive

        is_view = p in VIEW_PRIMITIVES and bool(srcs)
        if p in RESHAPE_PRIMITIVES and srcs:
            same_size = (p == "View" and dtype_size(node.inputs[0][1])
                         == dtype_size(node.outputs[0][1]))
            is_view = srcs[0].contiguous or same_size

        if is_view:
            for i, (name, out) in enumerate(zip(out_names, node.outputs)):
                src = srcs[i] if p == "Depends" else srcs[0]
                buffers[name] = _Buffer(
                    min(port_nbytes(out), src.read_bytes),
                    _view_contiguous(node, src, out) if p in VIEW_PRIMITIVES else src.contiguous,
                )
            continue

        launches += 1
        seen: set[str] = set()
        for name, src in zip(in_names, srcs):
            if name not in seen:
                seen.add(name)
                bytes_read += src.read_bytes
        for name, out in zip(out_names, node.outputs):
            nbytes = port_nbytes(out)
            bytes_written += nbytes
            buffers[name] = _Buffer(nbytes, True)

    return Traffic(launches=launches, bytes_read=bytes_read, bytes_written=bytes_written)


# ---------------------------------------------------------------------------------------
# The stock MLX Adafactor, for the plan report


def mlx_adafactor_graph(
    shape: Sequence[int], dtype: str = "float32", **options: Any
) -> list[GraphNode]:
    """The graph of one ``mlx.optimizers.Adafactor(**options).apply_single`` on a parameter
    of ``shape``: the gradient, parameter, step and every state array are graph inputs;
    the new parameter and new state arrays are the outputs.

    The state layout comes from the optimizer's own ``init_single``, so factored and
    unfactored parameters and ``beta_1`` are handled as MLX handles them.
    """
    import mlx.optimizers as optim

    return optimizer_graph(optim.Adafactor(**options), shape, dtype)


def optimizer_graph(opt: Any, shape: Sequence[int], dtype: str = "float32") -> list[GraphNode]:
    """The graph of one ``opt.apply_single`` (any ``mlx.optimizers.Optimizer``) on a
    parameter of ``shape``, with the state layout from the optimizer's ``init_single``."""
    import mlx.core as mx

    dt = getattr(mx, "bool_" if dtype == "bool" else dtype)
    g = mx.zeros(tuple(shape), dtype=dt)
    p = mx.zeros(tuple(shape), dtype=dt)
    state: dict[str, Any] = {}
    opt.init_single(p, state)
    keys = sorted(state)

    def step_fn(g: Any, p: Any, step: Any, *values: Any) -> list[Any]:
        opt.state["step"] = step
        st = dict(zip(keys, values))
        new_p = opt.apply_single(g, p, st)
        return [new_p, *(st[k] for k in keys)]

    return mlx_graph(step_fn, g, p, mx.array(1, mx.uint64), *(state[k] for k in keys))


def mlx_adafactor_traffic(
    shape: Sequence[int], dtype: str = "float32", **options: Any
) -> Traffic:
    """Eager traffic of one stock MLX Adafactor update (see :func:`mlx_adafactor_graph`)."""
    return graph_traffic(mlx_adafactor_graph(shape, dtype, **options))


# ---------------------------------------------------------------------------------------
# Counting dispatches of one optimizer step
#
# Launch overhead, not bandwidth, decides the step time of a tree of many small tensors, so
# the dispatch count of a whole step is reported beside the traffic of one parameter. It
# is counted on the lazy graph a step leaves behind (``mx.export_to_dot`` of the step's
# unevaluated outputs), not on the exported trace, for three reasons found by trying:
#
# * ``mx.export_function`` simplifies the trace (common subexpressions merged, equal
#   scalar constants merged), so the scalar glue an eager step recomputes per tensor (a
#   learning-rate schedule, a packed hyperparameter array) would appear once per step:
#   exactly the growth with the tensor count this count exists to show.
# * ``mx.export_function`` traces with compilation switched off: exporting ``mx.compile(f)``
#   gives ``f``'s unfused graph, never a ``Compiled`` node.
# * A compiled function's lazy outputs, by contrast, hang off the graph MLX replays: its
#   ``Compiled`` nodes (one per fused group of elementwise ops, however many it fuses)
#   and the primitives it could not fuse (reductions, custom kernels). The lazy graph of an
#   eager step is the one MLX evaluates op by op, duplicates included.
#
# Fused (Metal/CUDA) steps cannot be built for real here: ``mx.fast.metal_kernel`` records
# a ``CustomKernel`` while ``mx.export_function`` traces, but refuses to be called outside
# tracing without a Metal device, and ``mx.fast.cuda_kernel`` refuses always. So each
# launch is replaced by a stand-in (:class:`KernelStandIns`): one ``Depends`` node that
# consumes the launch's inputs and yields outputs of its shapes and dtypes, which neither
# MLX's optimizers nor the generated glue use otherwise. Like ``CustomKernel`` it is opaque
# to ``mx.compile``, so the glue around it fuses as it would around the real kernel; the
# count of stand-ins is checked against the launches the runner saw.


@dataclass(frozen=True)
class LazyNode:
    """One primitive of a lazy (unevaluated) MLX graph, as ``mx.export_to_dot`` names it.

    ``primitive`` is MLX's display name, which differs from the export name for some
    primitives (a sum ``Reduce`` is ``"Sum"``, a fused group is ``"Compiled"`` followed
    by the names of the ops it fused). The graph carries no shapes, only array names.
    """

    primitive: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class Dispatches:
    """Kernel dispatches of a graph: ``total`` counts every launch, of which ``fused`` are
    ``Compiled`` groups and ``kernels`` are custom (afgen) kernel launches; the rest
    (``total - fused - kernels``) are MLX ops launched one by one."""

    total: int
    fused: int
    kernels: int
    by_primitive: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    @property
    def ops(self) -> int:
        """Dispatches that are single MLX ops (glue, reductions, unfused elementwise)."""
        return self.total - self.fused - self.kernels

    def per_tensor(self, tensors: int) -> float:
        return self.total / tensors


_DOT_NODE = re.compile(r'^\{ (\d+) \[label ="([^"]*)", shape=rectangle\]; \}$')
_DOT_INPUT = re.compile(r'^"([^"]+)" -> (\d+)$')
_DOT_OUTPUT = re.compile(r'^(\d+) -> "([^"]+)"$')
_DOT_ARRAY = re.compile(r'^\{ (rank=(source|sink); )?"([^"]+)"; \}$')


def parse_dot(text: str) -> list[LazyNode]:
    """The nodes of MLX's DOT export in the order written (inputs before their users).

    Every line must be one MLX writes (``digraph {``, an array, a node, an edge, ``}``);
    anything else raises :class:`MlxGraphError` rather than being skipped.
    """
    nodes: list[tuple[str, list[str], list[str]]] = []
    # MLX names a node by its primitive object, which calls of one compiled function
    # share: a node line starts a new node, and edges belong to the latest of that name.
    latest: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line in ("digraph {", "}", "") or _DOT_ARRAY.match(line):
            continue
        if m := _DOT_NODE.match(line):
            latest[m[1]] = len(nodes)
            nodes.append((m[2], [], []))
        elif (m := _DOT_INPUT.match(line)) and m[2] in latest:
            nodes[latest[m[2]]][1].append(m[1])
        elif (m := _DOT_OUTPUT.match(line)) and m[1] in latest:
            nodes[latest[m[1]]][2].append(m[2])
        else:
            raise MlxGraphError(f"unexpected line {number} in MLX's DOT graph: {line!r}")
    return [LazyNode(p, tuple(ins), tuple(outs)) for p, ins, outs in nodes]


def lazy_graph(*outputs: Any) -> list[LazyNode]:
    """The unevaluated graph behind ``outputs`` (mx arrays), from ``mx.export_to_dot``.

    Evaluated arrays are where it stops: evaluate what should not be counted (initial
    state, inputs) before building the outputs.
    """
    import mlx.core as mx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.dot"
        mx.export_to_dot(str(path), *outputs)
        return parse_dot(path.read_text())


_KEEPS_LAYOUT = frozenset({"Copy", "Depends", "ExpandDims", "Squeeze", "StopGradient"})


def count_dispatches(nodes: list[LazyNode], stand_in: str | None = None) -> Dispatches:
    """Kernel dispatches of a lazy graph: every node except views; a ``Compiled`` node
    counts once however many ops it fused.

    Views are :data:`VIEW_PRIMITIVES`; a reshape-like primitive (:data:`RESHAPE_PRIMITIVES`)
    is a view of a row-contiguous input and a copy kernel otherwise. Without shapes,
    contiguity is followed conservatively: inputs and kernel outputs are contiguous, a
    squeeze or expand keeps its input's layout, and the output of a broadcast, transpose,
    slice, split or strided view is taken as non-contiguous (so a reshape of it counts a
    copy, as in :func:`graph_traffic`). A primitive of :data:`PER_INPUT_PRIMITIVES`
    counts one dispatch per input. ``stand_in`` names the primitive that stands for a
    custom kernel launch (see :class:`KernelStandIns`): it counts as a kernel, not a view.
    """
    contiguous: dict[str, bool] = {}
    by_primitive: dict[str, int] = {}
    fused = kernels = total = 0
    for node in nodes:
        p = node.primitive
        source_contiguous = all(contiguous.get(n, True) for n in node.input_names[:1])
        if p == stand_in:
            kernels += 1
        elif p in VIEW_PRIMITIVES or (p in RESHAPE_PRIMITIVES and source_contiguous):
            keeps = p in RESHAPE_PRIMITIVES or p in _KEEPS_LAYOUT
            contiguous.update((n, keeps and source_contiguous) for n in node.output_names)
            continue
        elif p.startswith("Compiled"):
            fused += 1
        total_name = "Compiled" if p.startswith("Compiled") else p
        launches = len(node.input_names) if p in PER_INPUT_PRIMITIVES else 1
        by_primitive[total_name] = by_primitive.get(total_name, 0) + launches
        total += launches
        contiguous.update((n, True) for n in node.output_names)
    return Dispatches(total=total, fused=fused, kernels=kernels,
                      by_primitive=tuple(sorted(by_primitive.items(), key=lambda kv: -kv[1])))


class KernelStandIns:
    """A generated module's kernel runner that launches nothing: each launch returns
    ``Depends`` stand-ins (zero-stride views of a 0-D zero, of the launch's output shapes
    and dtypes) that depend on every input, so the lazy graph of a fused step holds one
    node per launch with the glue around it. Nothing it returns can be evaluated usefully;
    it is for counting."""

    primitive = "Depends"

    def __init__(self) -> None:
        self.launches = 0

    def __call__(self, backend: str, name: str, input_names: list[str],
                 output_names: list[str], source: str, header: str, call: dict) -> list:
        import mlx.core as mx

        self.launches += 1
        outputs = [mx.broadcast_to(mx.array(0, dtype=dtype), tuple(shape))
                   for shape, dtype in zip(call["output_shapes"], call["output_dtypes"])]
        return mx.depends(outputs, list(call["inputs"]))


@contextlib.contextmanager
def kernel_stand_ins(module: Any) -> Iterator[KernelStandIns]:
    """Within the block, a generated module's kernel launches (and those of every module
    sharing its runtime) return :class:`KernelStandIns` outputs."""
    from afgen.check.kernel_runner import runtime_of

    runner = KernelStandIns()
    runtime = runtime_of(module)
    previous = runtime.use_kernel_runner(runner)
    try:
        yield runner
    finally:
        runtime.use_kernel_runner(previous)


def step_dispatches(optimizer: Any, parameters: Any, gradients: Any, *, compiled: bool,
                    stand_ins: KernelStandIns | None = None) -> Dispatches:
    """Dispatches of one ``optimizer.apply_gradients`` over a parameter tree, eager or
    under ``mx.compile`` (the usual training-loop form: the optimizer state as an implicit
    input and output).

    The state is initialised and evaluated first, so only the step is counted: the update
    of every tensor, the step counter and any schedules. Pass the ``stand_ins`` runner of
    :func:`kernel_stand_ins` for a fused backend; its launches must all appear in the graph.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    mx.eval(parameters, gradients)
    optimizer.init(parameters)
    mx.eval(optimizer.state)
    # mx.compile swaps the arrays of the containers it tracks; the caller's stay theirs.
    held = {"parameters": tree_map(lambda a: a, parameters)}

    def step(grads: Any) -> Any:
        held["parameters"] = optimizer.apply_gradients(grads, held["parameters"])
        return held["parameters"]

    if compiled:
        tracked = [held, optimizer.state]
        step = mx.compile(step, inputs=tracked, outputs=tracked)
    launched = stand_ins.launches if stand_ins else 0
    updated = step(gradients)
    outputs = [v for _, v in tree_flatten(updated)]
    outputs += [v for _, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)]
    counted = count_dispatches(lazy_graph(*outputs),
                               stand_in=stand_ins.primitive if stand_ins else None)
    if stand_ins and counted.kernels != stand_ins.launches - launched:
        raise MlxGraphError(f"{stand_ins.launches - launched} kernel launches but "
                            f"{counted.kernels} stand-ins in the graph")
    return counted


__all__ = [
    "DTYPE_SIZES",
    "PER_INPUT_PRIMITIVES",
    "RESHAPE_PRIMITIVES",
    "VIEW_PRIMITIVES",
    "Dispatches",
    "GraphNode",
    "KernelStandIns",
    "LazyNode",
    "MlxGraphError",
    "Port",
    "Traffic",
    "dtype_size",
    "count_dispatches",
    "graph_traffic",
    "kernel_stand_ins",
    "lazy_graph",
    "optimizer_graph",
    "parse_dot",
    "step_dispatches",
    "mlx_adafactor_graph",
    "mlx_adafactor_traffic",
    "mlx_graph",
    "port_nbytes",
]
