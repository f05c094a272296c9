"""The run-time support every generated optimizer shares.

A generated module holds only what its spec decides (hyperparameters, state shapes, the
update functions and kernel text); tree handling, validation, staging, the non-finite
policies, stochastic rounding and kernel launches live here, once. ``afgen build`` writes
this file's exact text as ``afgen_runtime.py`` beside the modules it generates, which
import it relatively, so a generated package still needs nothing but MLX and the Python
standard library.

A generated class subclasses :class:`GeneratedOptimizer` and provides its hooks (see
there). The update functions it renders call the helpers below as ``_rt.<name>``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import mlx.core as mx
from mlx.optimizers import Optimizer
from mlx.utils import tree_map, tree_map_with_path

BACKENDS = ("auto", "mlx", "metal", "cuda")
PRECISIONS = ("float32", "param")
NONFINITE = ("propagate", "skip", "raise")
FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)
SHAPE_CLASSES = ("full", "row", "col", "batch", "scalar")

Axes = tuple[int, int] | None
Leaf = tuple[str, Any, Any, Any]  # (path, gradient, parameter, state slot)
# (backend, kernel name, input names, output names, body, header, launch arguments)
KernelRunner = Callable[[str, str, list, list, str, str, dict], list]


# ---------------------------------------------------------------------------------------
# Option checks
# ---------------------------------------------------------------------------------------
def check_bool(name: str, value: object) -> bool:
    """A flag as a bool. Python would take any object as one, so ``"no"`` would switch a
    feature on; only bools and the integers 0 and 1 are accepted."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_seed(value: object) -> int:
    """The rounding seed is mixed as a uint32, so only those values are distinct seeds."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or \
            not 0 <= value < 2 ** 32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------
class Beside:
    """A tree walked beside the gradients. MLX's tree_map indexes the other trees with the
    gradient tree's keys; through this wrapper a key the tree lacks (or a place where it
    is not a container) gives None instead of an exception, so the checks can name the
    path. ``tree`` is what the tree holds at that place."""

    __slots__ = ("tree",)

    def __init__(self, tree: Any):
        self.tree = tree

    def __getitem__(self, key: Any) -> Beside:
        tree = self.tree
        if isinstance(tree, dict):
            return Beside(tree.get(key))
        if isinstance(tree, (list, tuple)) and isinstance(key, int) and 0 <= key < len(tree):
            return Beside(tree[key])
        return Beside(None)


def leaves(gradients: Any, parameters: Any, state: Any) -> list[Leaf]:
    """(path, gradient, parameter, state slot) for every gradient leaf, the path as
    tree_flatten writes it (keys may contain dots: the trees are walked, not looked up by
    path). As in MLX, an empty container in the gradients, nn.value_and_grad's ``{}`` for
    a model's list of strings, has no leaves, so whatever the parameters hold there is
    never looked at."""
    found: list[Leaf] = []
    tree_map_with_path(lambda path, g, p, s: found.append((path or "<root>", g, p.tree, s.tree)),
                       gradients, Beside(parameters), Beside(state))
    return found


def as_array(leaf: Any) -> Any:
    """A gradient leaf as an mx.array: MLX's ops take NumPy arrays and numbers, so its
    optimizers do, and converting once here lets every check read dtype and shape. What
    does not convert is left for ``check_leaf`` to name."""
    if isinstance(leaf, mx.array):
        return leaf
    try:
        return mx.array(leaf)
    except (TypeError, ValueError):
        return leaf


def copy_containers(tree: Any) -> Any:
    """New containers all the way down around the same leaves: a copy to stage a step in."""
    return tree_map(lambda leaf: leaf, tree)


def merge_into(target: dict | list, staged: dict | list) -> None:
    """Write staged values into the live state containers in place (mx.compile captures
    those containers, so they must not be replaced); a list grows as ``init`` grew it."""
    if isinstance(target, list):
        target.extend(staged[len(target):])
    for key, value in staged.items() if isinstance(staged, dict) else enumerate(staged):
        old = target.get(key) if isinstance(target, dict) else target[key]
        if isinstance(value, (dict, list)) and type(old) is type(value) and old is not value:
            merge_into(old, value)
        else:
            target[key] = value


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


def check_dtype(array: mx.array, what: str, owner: str) -> None:
    """``owner`` (the optimizer's class name) trains only floating arrays."""
    if array.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{what} has dtype {dtype_name(array.dtype)}; {owner} supports "
                         "float32, float16 and bfloat16")


def check_leaf(name: str, gradient: Any, parameter: Any, owner: str) -> None:
    """A gradient and its parameter, checked before anything is changed."""
    if not isinstance(gradient, mx.array):
        raise ValueError(f"gradient for parameter '{name}' is a {type(gradient).__name__}, "
                         "not an array")
    if not isinstance(parameter, mx.array):
        kind = "" if parameter is None else f" (it is a {type(parameter).__name__})"
        raise ValueError(f"gradient for '{name}' has no matching parameter{kind}")
    if gradient.shape != parameter.shape:
        raise ValueError(f"gradient for parameter '{name}' has shape {tuple(gradient.shape)}"
                         f" but the parameter has shape {tuple(parameter.shape)}")
    check_dtype(gradient, f"gradient for parameter '{name}'", owner)
    check_dtype(parameter, f"parameter '{name}'", owner)


def check_slot(name: str, parameter: mx.array, slot: Any, shapes: Mapping[str, Any],
               precision: str, owner: str) -> None:
    """A parameter's state as a checkpoint may have left it: tensors of the expected
    ``shapes`` (None: any shape) and a floating dtype. precision="float32" promotes
    16-bit tensors (exactly; an MLX checkpoint of a bfloat16 model has them) in ``slot``,
    the staged copy; precision="param" keeps the parameter's dtype and refuses another
    rather than round."""
    if not isinstance(slot, dict):
        raise ValueError(f"optimizer state of parameter '{name}' is a {type(slot).__name__}, "
                         "not a dict")
    shape = tuple(parameter.shape)
    dtype = mx.float32 if precision == "float32" else parameter.dtype
    for key, expected in shapes.items():
        value = slot.get(key)
        if value is None:
            continue
        what = f"state '{key}' of parameter '{name}'"
        if not isinstance(value, mx.array):
            raise ValueError(f"{what} is a {type(value).__name__}, not an mx.array")
        check_dtype(value, what, owner)
        if expected is not None and tuple(value.shape) != tuple(expected):
            raise ValueError(f"parameter '{name}' has shape {shape} but its state '{key}' has "
                             f"shape {tuple(value.shape)} (expected {tuple(expected)})")
        if value.dtype != dtype and precision == "param":
            raise ValueError(f"parameter '{name}' is {dtype_name(dtype)} but its state '{key}' "
                             f"is {dtype_name(value.dtype)}; precision='param' keeps the state "
                             "in the parameter's dtype: cast the state (or the model) to match, "
                             "or use precision='float32'")
        slot[key] = cast(value, dtype)


def check_assigned_state(state: dict, found: list[Leaf],
                         init_single: Callable[[mx.array, dict], None]) -> None:
    """A state assigned from a checkpoint is checked before anything changes: a missing
    ``step`` or state tensor (say, saved without ``beta_1``) would otherwise surface as a
    KeyError halfway through the step. The counters become the uint64 arrays MLX keeps
    (in ``state``, the staged copy, so a refused step leaves them as assigned)."""
    if "step" not in state:
        raise ValueError("optimizer state has no 'step'; assign the whole saved state")
    for key in ("step", "skipped_steps"):
        if key in state:
            state[key] = counter(key, state[key])
    for name, gradient, _, slot in found:
        if not slot:
            continue  # not initialised yet: init() creates it
        expected: dict = {}
        init_single(gradient, expected)  # lazy arrays, never evaluated
        missing = sorted(set(expected) - set(slot))
        if missing:
            raise ValueError(f"parameter '{name}' has optimizer state without {missing} "
                             f"(it has {sorted(slot)}); was it saved with other options?")


def counter(key: str, value: Any) -> mx.array:
    """A loaded ``step`` (or ``skipped_steps``) as the 0-D uint64 array MLX keeps, from an
    integer array or a plain int (a JSON checkpoint, say). Anything else is refused; a
    negative number would wrap around to about 1.8e19 in uint64."""
    if isinstance(value, mx.array):
        if value.ndim or not mx.issubdtype(value.dtype, mx.integer):
            shape = f" of shape {tuple(value.shape)}" if value.ndim else ""
            got = f"a {dtype_name(value.dtype)} array{shape}"
        elif mx.issubdtype(value.dtype, mx.signedinteger) and read_counter(key, value) < 0:
            got = str(value.item())
        else:
            return cast(value, mx.uint64)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
            0 <= value < 2 ** 64:
        return mx.array(int(value), mx.uint64)
    else:
        got = repr(value)
    raise ValueError(f"optimizer state '{key}' must be a non-negative integer (a 0-D integer "
                     f"array or an int); got {got}")


def read_counter(key: str, value: mx.array) -> int:
    """A signed counter's value, read on the host to check its sign (once, after the state
    is assigned); mx.compile cannot read it, so that case says what to do instead."""
    try:
        return value.item()
    except ValueError as exc:
        raise ValueError(f"optimizer state '{key}' is a signed integer array, whose sign is "
                         "checked on the host, which mx.compile does not allow; assign it "
                         "as uint64 (as MLX keeps it) or take the first step eagerly") from exc


# ---------------------------------------------------------------------------------------
# Non-finite gradients
# ---------------------------------------------------------------------------------------
def finite_flag(found: list[Leaf], mode: str, groups: Sequence[Any] = ()) -> mx.array | None:
    """None when nothing is to be selected afterwards ("propagate", MLX's behaviour, costs
    nothing; "raise" has already checked). For "skip", a 0-D bool array, true when every
    gradient is finite: it stays on the device (no host sync), so mx.compile can trace it.
    With sharded parameters, every process of ``groups`` gets the same flags (a gradient
    is finite where every process's slice is), so they all skip or raise together."""
    if mode == "propagate":
        return None
    named = [(name, g) for name, g, *_ in found]
    if not named:
        return None
    flags = mx.stack([mx.all(mx.isfinite(g)) for _, g in named])
    for group in groups:
        bad = mx.distributed.all_sum(mx.logical_not(flags).astype(mx.float32), group=group)
        flags = bad == 0
    if mode == "raise":
        raise_if_nonfinite(named, flags)
        return None
    return mx.all(flags)


def raise_if_nonfinite(named: list[tuple[str, mx.array]], flags: mx.array) -> None:
    """nonfinite="raise": read the flags on the host and name the first bad gradient. The
    read is a sync, which mx.compile (and vmap) refuse with a generic message, so that case
    is re-raised with the way out."""
    try:
        finite = flags.tolist()
    except ValueError as exc:
        raise ValueError("nonfinite='raise' reads the gradients' finiteness on the host (a "
                         "sync), which mx.compile and other function transformations do "
                         "not allow; use nonfinite='skip' inside compiled steps") from exc
    for (name, gradient), ok in zip(named, finite):
        if not ok:
            kind = "NaN" if mx.any(mx.isnan(gradient)).item() else "Inf"
            raise ValueError(f"gradient for parameter '{name}' is not finite (it contains "
                             f"{kind}); nonfinite='raise' left the parameters and the "
                             "optimizer state unchanged")


def keep_unless_finite(finite: mx.array, updated: Any, parameters: Any, staged: dict,
                       before: dict) -> tuple[Any, dict]:
    """nonfinite="skip": every new parameter and state value where all gradients were
    finite, else the old one bit for bit (``step`` included), and one more skipped step.
    mx.where instead of a Python branch, so no host sync is needed."""
    kept = select(finite, updated, parameters)
    staged = select(finite, staged, before)
    count = before.get("skipped_steps", mx.array(0, mx.uint64))
    staged["skipped_steps"] = count + mx.logical_not(finite).astype(count.dtype)
    return kept, staged


def select(flag: mx.array, new: Any, old: Any) -> Any:
    """``new`` where ``flag`` else ``old``, leaf by leaf over ``new``'s tree (``old`` may
    hold more, or lack a key the step added); leaves that did not change are passed
    through without a graph node."""
    def pick(value: Any, previous: Beside) -> Any:
        before = previous.tree
        if value is before or not isinstance(value, mx.array) or \
                not isinstance(before, mx.array):
            return value
        return mx.where(flag, value, before)

    return tree_map(pick, new, Beside(old))


# ---------------------------------------------------------------------------------------
# Stochastic rounding
# ---------------------------------------------------------------------------------------
def mix32(x: mx.array) -> mx.array:
    """A 32-bit integer hash (lowbias32): consecutive inputs give unrelated outputs. The
    kernels compute the same function, so every backend draws the same noise."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


def rounding_key(seed: int, salt: int, step: mx.array) -> mx.array:
    """The key of one parameter's rounding noise at one step: a uint32, never 0 (0 means
    round to nearest in the kernels). It mixes the seed, the parameter's place in the tree
    (``salt``) and the step, so no two writes share noise."""
    base = mix32(mx.array(seed, dtype=mx.uint32) ^
                 (mx.array(salt, dtype=mx.uint32) * 0x85EBCA6B))
    return mix32((mx.array(step).astype(mx.uint32) * 0x9E3779B9) ^ base) | 1


def stochastic_bfloat16(value: mx.array, key: mx.array) -> mx.array:
    """float32 -> bfloat16, rounding up with probability (remainder / gap): add 16 random
    bits below the kept ones, then truncate. Unbiased: E[result] = value."""
    index = mx.arange(value.size, dtype=mx.uint32).reshape(value.shape)
    noise = mix32(index ^ key) & 0xFFFF
    bits = (value.view(mx.uint32) + noise) & 0xFFFF0000
    rounded = bits.view(mx.float32).astype(mx.bfloat16)  # exact: the low bits are zero
    return mx.where(mx.isnan(value), value.astype(mx.bfloat16), rounded)


# ---------------------------------------------------------------------------------------
# Layouts: state layout, broadcast layout, reoriented views
# ---------------------------------------------------------------------------------------
def cast(value: mx.array, dtype: mx.Dtype) -> mx.array:
    """Cast only when needed: a same-dtype astype is still a copy in MLX's graph."""
    return value if value.dtype == dtype else value.astype(dtype)


def expand(x: mx.array, shape_class: str) -> mx.array:
    """State layout -> broadcast layout: row (*B, M, 1), col (*B, 1, N), batch (*B, 1, 1)."""
    if shape_class == "row":
        return mx.expand_dims(x, -1)
    if shape_class == "col":
        return mx.expand_dims(x, -2)
    if shape_class == "batch":
        return mx.expand_dims(x, (-2, -1))
    return x


def collapse(value: Any, like: mx.array, shape_class: str) -> mx.array:
    """Broadcast layout -> the layout and dtype of ``like`` (a value may still be a scalar
    or broadcast smaller, as an update that leaves a tensor constant computes it)."""
    shape = tuple(like.shape)
    if shape_class == "row":
        layout = shape + (1,)
    elif shape_class == "col":
        layout = shape[:-1] + (1,) + shape[-1:]
    elif shape_class == "batch":
        layout = shape + (1, 1)
    else:
        layout = shape
    value = mx.array(value) if not isinstance(value, mx.array) else value
    if tuple(value.shape) != layout:
        value = mx.broadcast_to(value, layout)
    if tuple(value.shape) != shape:
        value = value.reshape(shape)
    return cast(value, like.dtype)


def fit(value: Any, like: mx.array) -> mx.array:
    """A value of the update in ``like``'s shape and dtype, for storing it where ``like``
    was (the MLX-ops update keeps state in its own layout; a value may still be a scalar
    or broadcast smaller, as an update that leaves a tensor constant computes it)."""
    return collapse(value, like, "full")


def once(value: Any) -> Any:
    """A small array value that meets a full-size one, computed once. Under
    ``mx.compile`` MLX fuses elementwise arithmetic on a small array into the loop over
    the full-size array that reads it, so a scalar's ``sqrt``, divisions and ``maximum``
    would be recomputed for every element. A view that adds and drops an axis is not
    fused (and, unlike ``mx.contiguous``, ``mx.export_function`` can save it), so the
    value is computed on its own and the loop reads the result. Eagerly it is the value
    itself, shared. A Python number (a static choice may pick one) stays as it is."""
    if not isinstance(value, mx.array):
        return value
    return mx.squeeze(mx.expand_dims(value, 0), 0)


def host_log(x: float) -> float:
    """``log`` of a Python number in double precision, -inf at 0 and NaN below 0 as MLX
    gives them (``math.log`` raises there)."""
    if x > 0:
        return math.log(x)
    return -math.inf if x == 0 else math.nan


def host_exp(x: float) -> float:
    """``exp`` of a Python number in double precision, inf where it overflows (as MLX)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def largest_two(shape: Sequence[int]) -> tuple[int, int]:
    """The factored axes are the two largest (sizes sorted stably, so ties go to the later
    axis): the second largest gives the rows, the largest the cols."""
    order = sorted(range(len(shape)), key=lambda axis: shape[axis])
    return order[-2], order[-1]


def without(shape: Sequence[int], *axes: int) -> tuple[int, ...]:
    """``shape`` less the given axes: the shape of a state that reduces over them."""
    return tuple(size for axis, size in enumerate(shape) if axis not in axes)


def view_permutation(axes: tuple[int, int], ndim: int, shape_class: str) -> list[int]:
    """Axis order that moves the factored axes last in a tensor of this class (the update
    is written for rows and cols last); a row state lacks the col axis, a col state the
    row axis, a batch state both. ``ndim`` is the parameter's."""
    row, col = axes
    kept = {"full": (row, col), "row": (row,), "col": (col,)}.get(shape_class, ())
    dropped = {"row": (col,), "col": (row,), "batch": (row, col)}.get(shape_class, ())
    own = [a for a in range(ndim) if a not in dropped]
    return [own.index(a) for a in own if a not in kept] + [own.index(a) for a in kept]


def inverse(permutation: Sequence[int]) -> list[int]:
    out = [0] * len(permutation)
    for position, axis in enumerate(permutation):
        out[axis] = position
    return out


def reoriented(update: Callable[[mx.array, mx.array, dict], mx.array], axes: Axes,
               gradient: mx.array, parameter: mx.array, state: dict,
               state_classes: Mapping[str, str]) -> mx.array:
    """Run an update written for the factored axes last on a parameter factored over
    other axes: transposed views in, the update, transposed back. State keeps its own
    layout (each state tensor is the parameter's shape without the axes it reduces);
    ``state_classes`` gives each state key's shape class (a key not there is a scalar)."""
    ndim = gradient.ndim
    if axes is None or tuple(axes) == (ndim - 2, ndim - 1):
        return update(gradient, parameter, state)
    full = view_permutation(axes, ndim, "full")
    view = dict(state)
    for key, shape_class in state_classes.items():
        if key in view and shape_class != "scalar":
            view[key] = mx.transpose(view[key], view_permutation(axes, ndim, shape_class))
    new = update(mx.transpose(gradient, full), mx.transpose(parameter, full), view)
    for key, value in view.items():
        shape_class = state_classes.get(key, "scalar")
        state[key] = value if shape_class == "scalar" else mx.transpose(
            value, inverse(view_permutation(axes, ndim, shape_class)))
    return mx.transpose(new, inverse(full))


# ---------------------------------------------------------------------------------------
# Accurate reductions
# ---------------------------------------------------------------------------------------
# MLX's CPU reduction adds an output's elements one after another, so its float32 error
# grows with the length: the mean of 16M squares of normal samples comes out 3% small.
# Summing blocks of SUM_BLOCK elements, then blocks of those partial sums, keeps every
# chain of additions short (the error then grows with the logarithm of the length). The
# input is read once and never copied: splitting an axis in two is a strided view, and
# the partial sums are 1/SUM_BLOCK of it.
SUM_BLOCK = 64
HALF_FLOATS = (mx.float16, mx.bfloat16)


def _reduced_axes(ndim: int, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimensions")
    return tuple(sorted({a % ndim for a in axes}))


def _blocked_axis_sum(x: mx.array, axis: int) -> mx.array:
    """The sum along one axis (kept, of length 1), in blocks of SUM_BLOCK."""
    while x.shape[axis] > SUM_BLOCK:
        length = x.shape[axis]
        whole, rest = divmod(length, SUM_BLOCK)
        before = (slice(None),) * axis
        head = x[before + (slice(0, whole * SUM_BLOCK),)] if rest else x
        split = x.shape[:axis] + (whole, SUM_BLOCK) + x.shape[axis + 1:]
        partial = mx.sum(head.reshape(split), axis=axis + 1)
        if rest:
            tail = mx.sum(x[before + (slice(whole * SUM_BLOCK, length),)], axis=axis,
                          keepdims=True)
            partial = mx.concatenate([partial, tail], axis=axis)
        x = partial
    return mx.sum(x, axis=axis, keepdims=True)


def _is_short(x: mx.array, axes: tuple[int, ...]) -> bool:
    """MLX reduces it as accurately: few elements per output, or a 16-bit input (MLX
    accumulates those in float32 and rounds once; blocks would round every partial sum)."""
    return x.dtype in HALF_FLOATS or math.prod(x.shape[a] for a in axes) <= SUM_BLOCK


def total(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False
          ) -> mx.array:
    """``mx.sum`` accurate to float32 at any length (blocked partial sums)."""
    x = x if isinstance(x, mx.array) else mx.array(x)
    axes = _reduced_axes(x.ndim, axis)
    if _is_short(x, axes):
        return mx.sum(x, axis=axis, keepdims=keepdims)
    for a in reversed(axes):
        x = _blocked_axis_sum(x, a)
    return x if keepdims else x.squeeze(axes)


def mean(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False
         ) -> mx.array:
    """``mx.mean`` accurate to float32 at any length (``mx.mean`` itself where that is as
    accurate, so small reductions keep MLX's bits)."""
    x = x if isinstance(x, mx.array) else mx.array(x)
    axes = _reduced_axes(x.ndim, axis)
    if _is_short(x, axes):
        return mx.mean(x, axis=axis, keepdims=keepdims)
    return total(x, axes, keepdims) / math.prod(x.shape[a] for a in axes)


# ---------------------------------------------------------------------------------------
# Sharded parameters
# ---------------------------------------------------------------------------------------
class Sharding(NamedTuple):
    """A parameter split across the processes of ``group`` along ``axis`` (each holds
    an equal slice), as ``nn.fully_shard`` (axis 0) and MLX's sharded linear layers
    split theirs. Its state is split the same way wherever the state has that axis."""

    axis: int
    group: Any  # mx.distributed.Group


class ShardedAxis(NamedTuple):
    """The sharded axis as an update sees its parameter (after ``reoriented`` moved the
    factored axes last): axis ``axis`` of ``ndim``, completed over ``group``."""

    axis: int
    ndim: int
    group: Any

    def position(self, shape_class: str, compact: bool) -> int | None:
        """Where the sharded axis is in a value of ``shape_class``, or None where that
        value does not vary along it (a row value of a parameter sharded along its cols
        is already whole). ``compact``: a row/col/batch value lacks the axes it folded
        (the MLX-ops statements), else it keeps them with size 1 (the fused drivers)."""
        s, rows, cols = self.axis, self.ndim - 2, self.ndim - 1
        dropped = {"full": (), "row": (cols,), "col": (rows,), "batch": (rows, cols)}.get(
            shape_class)
        if dropped is None or s in dropped:
            return None
        return s - sum(1 for d in dropped if d < s) if compact else s

    def crosses(self, shape_class: str, axis: int | Sequence[int] | None, ndim: int,
                compact: bool = True) -> bool:
        """Whether reducing a value of ``shape_class`` (``ndim`` axes) over ``axis``
        (None: all) folds the sharded axis, so each process holds only part of it."""
        where = self.position(shape_class, compact)
        if where is None:
            return False
        if axis is None:
            return True
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        return where in {a % ndim for a in axes}


def view_sharding(sharding: Sharding | None, ndim: int, axes: Axes) -> ShardedAxis | None:
    """The sharded axis of a parameter as its update sees it, or None if the parameter
    is whole here (unsharded, or a group of one)."""
    if sharding is None or sharding.group.size() == 1:
        return None
    axis = sharding.axis % max(ndim, 1)
    if axes is not None and tuple(axes) != (ndim - 2, ndim - 1):
        axis = view_permutation(axes, ndim, "full").index(axis)
    return ShardedAxis(axis, ndim, sharding.group)


def completed(local: mx.array, shard: ShardedAxis | None, crossing: bool,
              how: str) -> mx.array:
    """A reduction of this process's slice made whole: the partial sums added, the
    partial maxima (minima) folded, over the group, where the reduction crosses the
    sharded axis."""
    if shard is None or not crossing:
        return local
    collective = {"sum": mx.distributed.all_sum, "max": mx.distributed.all_max,
                  "min": mx.distributed.all_min}[how]
    return collective(local, group=shard.group)


def shardings_of(model: Any, group: Any = None) -> dict[str, Sharding]:
    """How MLX's sharded modules split ``model``'s trainable parameters, by parameter
    path (the paths ``tree_flatten(model.trainable_parameters())`` gives): every
    parameter under ``nn.FullyShardedModule`` along axis 0, an ``AllToShardedLinear``'s
    weight and bias along axis 0, a ``ShardedToAllLinear``'s weight along its last axis
    (its bias is whole). A ``FullyShardedModule`` does not keep its group, so it is
    ``group`` (default: the global group)."""
    from mlx.nn.layers.distributed import (
        AllToShardedLinear,
        FullyShardedModule,
        QuantizedAllToShardedLinear,
        QuantizedShardedToAllLinear,
        ShardedToAllLinear,
    )
    from mlx.utils import tree_flatten

    found: dict[str, Sharding] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        own = tree_flatten(module.trainable_parameters())
        if isinstance(module, FullyShardedModule):
            group = group or mx.distributed.init()
            for name, _ in own:
                found[prefix + name] = Sharding(0, group)
        elif isinstance(module, (AllToShardedLinear, QuantizedAllToShardedLinear)):
            for name, _ in own:
                if "." not in name:
                    found.setdefault(prefix + name, Sharding(0, module.group))
        elif isinstance(module, (ShardedToAllLinear, QuantizedShardedToAllLinear)):
            for name, _ in own:
                if "." not in name and name != "bias":
                    found.setdefault(prefix + name, Sharding(-1, module.group))
    return found


# ---------------------------------------------------------------------------------------
# Fused kernels: geometry, small inputs, partial reductions, launches
# ---------------------------------------------------------------------------------------
class Geometry(NamedTuple):
    """A parameter viewed as B matrices of M x N, tiled into nrb row blocks and ncc col
    chunks; ``dims`` is what the kernels read, ``grid`` how many threads they launch with
    (all on x: CUDA caps grid y and z at 65535 blocks). ``tensors`` same-shape tensors
    may be stacked along a leading axis of ``shape`` and updated in one launch per pass:
    reductions over a whole tensor are then per tensor (``tensor_total``)."""

    shape: tuple
    B: int
    M: int
    N: int
    nrb: int
    ncc: int
    dims: mx.array
    grid: tuple
    threads: int
    tensors: int = 1
    shard: ShardedAxis | None = None  # a sharded parameter's axis (never stacked)


def geometry(shape: Sequence[int], factored: bool, rows_per_group: int | None,
             cols_per_group: int | None, threads: int, tensors: int = 1,
             shard: ShardedAxis | None = None) -> Geometry:
    """View the parameter as B matrices of M x N (unfactored: one 1 x size row per
    tensor); a group size of None makes one tile of a whole matrix (the MLX twins of the
    kernels). With ``tensors`` > 1, ``shape`` is that many tensors stacked on axis 0."""
    shape = tuple(shape)
    if factored:
        B, M, N = math.prod(shape[:-2]), shape[-2], shape[-1]
    else:
        B, M, N = tensors, 1, math.prod(shape) // max(tensors, 1)
    rows_per_group, cols_per_group = rows_per_group or max(M, 1), cols_per_group or max(N, 1)
    nrb = -(-M // rows_per_group)
    ncc = -(-N // cols_per_group)
    per_tensor = max(B // tensors, 1)
    dims = mx.array([B, M, N, nrb, ncc, per_tensor], dtype=mx.uint32)
    return Geometry(shape, B, M, N, nrb, ncc, dims, (B * nrb * ncc * threads, 1, 1), threads,
                    tensors, shard)


def float32(value: Any) -> mx.array:
    """A number or array as a float32 array (``mx.array(x, dtype)`` of an array is a
    copy in MLX's graph even when the dtype is already right)."""
    return cast(value, mx.float32) if isinstance(value, mx.array) else mx.array(value,
                                                                                 mx.float32)


def rows(value: Any, geo: Geometry) -> mx.array:
    """A per-row value (broadcast layout) as the flat float32 array a kernel reads."""
    return mx.broadcast_to(float32(value), geo.shape[:-1] + (1,)).reshape(-1)


def cols(value: Any, geo: Geometry) -> mx.array:
    """A per-col value (broadcast layout) as the flat float32 array a kernel reads."""
    layout = geo.shape[:-2] + (1, geo.N)
    return mx.broadcast_to(float32(value), layout).reshape(-1)


def batches(value: Any, geo: Geometry) -> mx.array:
    """A per-matrix value (broadcast layout) as the flat float32 array a kernel reads."""
    layout = geo.shape[:-2] + (1, 1)
    return mx.broadcast_to(float32(value), layout).reshape(-1)


def scalar_buffers(values: Sequence[Any], geo: Geometry) -> list[mx.array]:
    """A kernel's dynamic scalars, each its own float32 buffer (new values never
    recompile, and nothing is copied to pack them): one value per tensor of the launch,
    a shared value repeated for each tensor of a stack."""
    buffers = [float32(v).reshape(-1) for v in values]
    if geo.tensors == 1:
        return buffers
    return [mx.broadcast_to(v, (geo.tensors,)) if v.size == 1 else v for v in buffers]


def largest(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False
            ) -> mx.array:
    """``mx.max``, with ``total``'s signature."""
    return mx.max(x, axis=axis, keepdims=keepdims)


FOLDS = {"sum": total, "mean": mean, "max": largest}
"""How the drivers fold a reduction's partials or a small value, by the spec's ``how``."""


def _finished(local: mx.array, geo: Geometry, crossing: bool, how: str, count: int
              ) -> mx.array:
    """Partials folded by this process made whole across a sharded axis, and a mean's
    sum divided by how many elements it folded (on every process)."""
    shard = geo.shard if crossing else None
    whole = completed(local, shard, crossing, "max" if how == "max" else "sum")
    if how != "mean":
        return whole
    return whole / (count * shard.group.size() if shard is not None else count)


def tensor_total(part: mx.array, geo: Geometry, how: str = "sum") -> mx.array:
    """A kernel's partial sums (maxima) (flat, in matrix order) folded per tensor: one
    value, or one per stacked tensor in the broadcast layout of the stack
    (``(tensors, 1, ...)``); a mean divides by the tensor's size."""
    reduce = largest if how == "max" else total
    count = max(math.prod(geo.shape) // geo.tensors, 1)
    if geo.tensors == 1:
        return _finished(reduce(part), geo, True, how, count)
    per_tensor = reduce(part.reshape(geo.tensors, -1), 1)
    return _finished(per_tensor.reshape((geo.tensors,) + (1,) * (len(geo.shape) - 1)), geo,
                     True, how, count)


def tensor_reduce(x: Any, geo: Geometry, how: str, shape_class: str = "full") -> mx.array:
    """The sum, mean or max over a whole tensor of a small value (of ``shape_class``) in
    the broadcast layout: per tensor when ``geo`` stacks several and the value differs
    between them (it has their leading axis), else one value for all."""
    reduce = FOLDS[how]
    x = x if isinstance(x, mx.array) else mx.array(x)
    if geo.shard is not None:
        return small_reduce(x, geo, how, None, shape_class)
    if geo.tensors == 1 or x.ndim != len(geo.shape) or x.shape[0] != geo.tensors:
        return reduce(x)
    per_tensor = reduce(x.reshape(geo.tensors, -1), 1)
    return per_tensor.reshape((geo.tensors,) + (1,) * (len(geo.shape) - 1))


def row_total(part: mx.array, geo: Geometry, how: str = "sum") -> mx.array:
    """Per-row totals (maxima, means) (broadcast layout) from a kernel's partials, one per
    col chunk."""
    per_row = (largest if how == "max" else total)(part.reshape(geo.B, geo.M, geo.ncc), -1)
    crossing = geo.shard is not None and geo.shard.axis == len(geo.shape) - 1
    return _finished(per_row.reshape(geo.shape[:-1] + (1,)), geo, crossing, how, geo.N)


def col_total(part: mx.array, geo: Geometry, how: str = "sum") -> mx.array:
    """Per-col totals (maxima, means) (broadcast layout) from a kernel's partials, one per
    row block."""
    per_col = (largest if how == "max" else total)(part.reshape(geo.B, geo.nrb, geo.N), 1)
    crossing = geo.shard is not None and geo.shard.axis == len(geo.shape) - 2
    return _finished(per_col.reshape(geo.shape[:-2] + (1, geo.N)), geo, crossing, how, geo.M)


def small_reduce(x: Any, geo: Geometry, how: str, axis: int | Sequence[int] | None,
                 shape_class: str) -> mx.array:
    """A reduction in the drivers' glue of a small value (of ``shape_class``, broadcast
    layout), made whole across the sharded axis where it folds it."""
    x = x if isinstance(x, mx.array) else mx.array(x)
    shard = geo.shard
    crossing = shard is not None and shard.crosses(shape_class, axis, x.ndim, compact=False)
    if how == "mean" and crossing:
        local = total(x, axis, keepdims=axis is not None)
        return _finished(local, geo, True, how, x.size // max(local.size, 1))
    reduce = FOLDS[how]
    local = reduce(x, axis, keepdims=True) if axis is not None else reduce(x)
    return _finished(local, geo, crossing, how, 1)


class KernelTables(NamedTuple):
    """A generated module's kernel text. ``kernels[name]`` is (input names, output names,
    the names of the parameter and state dtype template parameters, body): one body for
    every target, MLX writes the signatures. Per target: ``prologues`` (put before every
    body: the thread and group indices), ``headers`` (the helpers the bodies call) and
    ``factories`` (the ``mx.fast`` function that builds its kernels). ``threads`` is the
    threadgroup size the kernels are written for. ``mlx_passes[name]`` is the kernel's
    twin in MLX ops as (function, factored, input classes, result kinds, rounding-key
    index): see ``afgen.backends.mlx_passes.MLXPass`` and ``launch_mlx_pass``."""

    kernels: Mapping[str, tuple]
    prologues: Mapping[str, str]
    headers: Mapping[str, str]
    factories: Mapping[str, str]
    threads: int
    mlx_passes: Mapping[str, tuple] = {}


_kernel_runner: KernelRunner | None = None
_kernel_objects: dict[tuple, Any] = {}


def use_kernel_runner(runner: KernelRunner | None) -> KernelRunner | None:
    """Run kernel text through ``runner`` instead of MLX (None: MLX again); returns the
    previous runner. afgen's verifier executes the exact kernel source on a CPU this way
    when there is no GPU; while a runner is set every fused backend counts as available
    and ``"auto"`` picks MLX ops. It applies to every optimizer using this runtime."""
    global _kernel_runner
    previous, _kernel_runner = _kernel_runner, runner
    return previous


def kernel_runner() -> KernelRunner | None:
    return _kernel_runner


def launch(tables: KernelTables, backend: str, name: str, geo: Geometry,
           inputs: list[mx.array], outputs: list[tuple[tuple, mx.Dtype]], T: mx.Dtype,
           S: mx.Dtype) -> list[mx.array]:
    """Run kernel ``name`` of ``backend`` over ``geo``'s grid. ``inputs`` are arrays and
    one list, the kernel's dynamic scalars (a kernel reads each from a buffer of its own,
    ``scalar_buffers``; an MLX twin takes them as they are). ``outputs`` are (shape, dtype); T
    and S are the parameter and state dtypes the text is templated on. Kernel objects
    are built once per text (a changed body or header builds a new one)."""
    if backend == "mlx":
        return launch_mlx_pass(tables.mlx_passes[name], geo, inputs, outputs)
    inputs = [b for x in inputs
              for b in (scalar_buffers(x, geo) if isinstance(x, list) else [x])]
    input_names, output_names, (t_name, s_name), body = tables.kernels[name]
    source = tables.prologues[backend] + body
    header = tables.headers[backend]
    call = dict(inputs=inputs, template=[(t_name, T), (s_name, S)], grid=geo.grid,
                threadgroup=(geo.threads, 1, 1), output_shapes=[shape for shape, _ in outputs],
                output_dtypes=[dtype for _, dtype in outputs])
    if _kernel_runner is not None:
        return _kernel_runner(backend, name, list(input_names), list(output_names), source,
                              header, call)
    cache_key = (backend, name, source, header)
    kernel = _kernel_objects.get(cache_key)
    if kernel is None:
        factory = getattr(mx.fast, tables.factories[backend])
        kernel = factory(name=name, input_names=list(input_names),
                         output_names=list(output_names), source=source, header=header,
                         ensure_row_contiguous=True)
        _kernel_objects[cache_key] = kernel
    return kernel(**call)


def launch_mlx_pass(twin: tuple, geo: Geometry, inputs: list[Any],
                    outputs: list[tuple[tuple, mx.Dtype]]) -> list[mx.array]:
    """Run a kernel's MLX twin on the kernel's launch arguments and return what the kernel
    would: its full-size results in the requested dtypes (the new parameter rounded as
    the kernel rounds it), and its reduction operands reduced accurately into one
    partial sum per matrix, row or col (the geometry of ``backend="mlx"`` is one tile
    per matrix). A factored layout travels as (B, M, N) with rows, cols and batches in
    the broadcast layout; an unfactored one in the parameter's own shape, and its
    results are not reshaped: under ``mx.compile`` reshaping several results of one
    fused loop splits the loop into one per result."""
    function, factored, in_kinds, result_kinds, key_index = twin
    B, M, N = geo.B, geo.M, geo.N
    full = (B, M, N) if factored else geo.shape
    views = {"f": full, "b": (B, 1, 1), "r": (B, M, 1), "c": (B, 1, N)}
    arrays = [x.reshape(views[kind]) for kind, x in zip(in_kinds, inputs)]
    # A scalar computed by the glue is handed over as computed (``once``): under
    # ``mx.compile`` its arithmetic would otherwise be fused into the pass's loop.
    scalars = [once(cast(x, mx.float32)) if isinstance(x, mx.array)
               else mx.array(x, mx.float32) for x in inputs[len(in_kinds)]]
    if not set(result_kinds) & set("fpm") and math.prod(full) > CHUNK_ELEMENTS:
        return _reduce_in_chunks(function, factored, in_kinds, result_kinds, geo, arrays,
                                 scalars, outputs)
    out = []
    results = function(*arrays, *scalars[:key_index])
    for kind, value, (shape, dtype) in zip(result_kinds, results, outputs):
        if value.shape != full:  # a result that is constant along some axis
            value = mx.broadcast_to(value, full)
        if kind in "arcARC":
            out.append(_reduced(value, kind, factored).reshape(shape))
            continue
        if kind == "m":  # a matrix block's operand, whole
            out.append(cast(value, mx.float32).reshape(shape))
            continue
        value = value.reshape(geo.shape)
        if kind == "p" and dtype == mx.bfloat16 and key_index is not None:
            rounding_key = scalars[key_index].view(mx.uint32)
            value = mx.where(rounding_key == 0, value.astype(dtype),
                             stochastic_bfloat16(value, rounding_key))
        out.append(cast(value, dtype))
    return out


PLANNED_MIN_ELEMENTS = 1 << 17
"""With float32 math, ``backend="mlx"`` runs the fused plan (the kernels' MLX twins, one
fused loop per pass and fewer full-size arrays) for a parameter of at least this many
elements, and the spec's statements for a smaller one: the plan's glue costs a fixed time
per tensor that, measured on a CPU, outweighs what it saves below about 2**17 elements
(a 256 x 256 matrix is faster as statements, 512 x 512 as the plan). Both programs are
verified at every size (``afgen.check.verify``)."""

STACK_MAX_ELEMENTS = 1 << 22
"""With fused kernels, same-shape tensors of up to this many elements are updated as one
stack (``GeneratedOptimizer._update_stacks``): a step then launches a few kernels and one
run of the glue per pass for each shape, not per tensor. Stacking copies the gradients,
parameters and state once more; on a GPU, where every launch costs several microseconds
whatever its size, that copy is estimated (not yet timed on a GPU) to cost less than the
launches it saves up to a few million elements per tensor."""

CHUNK_ELEMENTS = 1 << 21
"""A pass that only reduces runs on chunks of about this many elements (8 MB of float32):
each chunk's operands are freed before the next chunk's are made, so they come from
MLX's buffer cache (32 MB by default) instead of fresh pages, which the kernel faults in
4 KiB at a time (a fresh full-size operand of a large tensor costs several times its
arithmetic)."""


def _reduced(value: mx.array, kind: str, factored: bool) -> mx.array:
    """A twin's reduction operand folded as its kernel folds it: per matrix (``a``), row
    (``r``) or col (``c``), summed (lower case) or the largest value (upper case); an
    unfactored parameter is one row, so per col is per element."""
    fold = largest if kind.isupper() else total
    if factored:
        return fold(value, {"a": (-2, -1), "r": -1, "c": -2}[kind.lower()])
    return value if kind in "cC" else fold(value)


def _reduce_in_chunks(function: Callable, factored: bool, in_kinds: str, result_kinds: str,
                      geo: Geometry, arrays: list[mx.array], scalars: list[mx.array],
                      outputs: list[tuple[tuple, mx.Dtype]]) -> list[mx.array]:
    """``launch_mlx_pass`` for a pass without full-size results, over blocks of rows of
    every matrix (a factored layout) or of the flat parameter; the partial results of
    the chunks are added (accurately) or, per row, put side by side."""
    B, M, N = geo.B, geo.M, geo.N
    if factored:
        step = max(1, CHUNK_ELEMENTS // max(B * N, 1))
        bounds = [(a, min(a + step, M)) for a in range(0, M, step)]
        pieces = [[x[:, a:b] if kind in "fr" else x for kind, x in zip(in_kinds, arrays)]
                  for a, b in bounds]
        shapes = [(B, b - a, N) for a, b in bounds]
    else:
        size = geo.B * geo.M * geo.N
        if set("cC") & set(result_kinds):  # per element: nothing to chunk
            bounds = [(0, size)]
        else:
            bounds = [(a, min(a + CHUNK_ELEMENTS, size))
                      for a in range(0, size, CHUNK_ELEMENTS)]
        pieces = [[x.reshape(-1)[a:b] for x in arrays] for a, b in bounds]
        shapes = [(b - a,) for a, b in bounds]
    partials: list[list[mx.array]] = [[] for _ in result_kinds]
    for piece, shape in zip(pieces, shapes):
        for index, (kind, value) in enumerate(zip(result_kinds, function(*piece, *scalars))):
            value = mx.broadcast_to(value, shape) if value.shape != shape else value
            value = _reduced(value, kind, factored)
            partials[index].append(value if value.ndim else value.reshape(1))
    out = []
    for kind, parts, (shape, _) in zip(result_kinds, partials, outputs):
        if kind in "rR" and factored:
            value = mx.concatenate(parts, axis=1)
        else:
            value = (largest if kind.isupper() else total)(mx.stack(parts), 0)
        out.append(value.reshape(shape))
    return out


def available(backend: str) -> bool:
    """Whether this MLX build can run ``backend`` (any, while a kernel runner is set)."""
    if _kernel_runner is not None or backend == "mlx":
        return True
    device = getattr(mx, backend, None)  # a kernel target: MLX's device module of its name
    return device is not None and device.is_available()


def resolve_backend(backend: object) -> str:
    """The backend to run: ``"auto"`` is Metal or CUDA when MLX has it, else MLX ops; a
    fused backend this MLX build lacks is refused rather than failing at the first step."""
    backend = check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        for candidate in ("metal", "cuda"):
            if _kernel_runner is None and available(candidate):
                return candidate
        return "mlx"
    if not available(backend):
        raise ValueError(f"backend {backend!r} is not available in this MLX build "
                         f"(mx.{backend}.is_available() is False); use 'mlx' or 'auto'")
    return backend


def trainable(parameter: Any) -> bool:
    """Whether a leaf gets optimizer state: a frozen quantized layer's uint32 weight, say,
    which ``init(model.parameters())`` passes too, gets none (MLX's own classes give it
    state that nothing uses); a gradient for it is refused by name."""
    return isinstance(parameter, mx.array) and parameter.dtype in FLOAT_DTYPES


# ---------------------------------------------------------------------------------------
# The base class of generated optimizers
# ---------------------------------------------------------------------------------------
class GeneratedOptimizer(Optimizer):
    """What every generated optimizer does the same way: the common options, staged and
    checked steps, the non-finite policies, rounding and dispatch to the update function
    of the parameter's static configuration.

    A generated class sets its hyperparameters after ``super().__init__(...)``, then calls
    ``self._check_requirements()``, and provides these hooks:

    * ``_STATE_CLASSES``: state key -> shape class (``"full"``, ``"row"``, ``"col"``,
      ``"batch"``, ``"scalar"``), to reorient state when the factored axes are not last;
    * ``_factor_axes(shape)``: the (row, col) axes a parameter is factored over, or None;
    * ``_static_key(factored)``: the key of the update function for this configuration;
    * ``_state_shapes(shape, axes)``: every state key's expected shape (None: any);
    * ``_initial_state(shape, axes)``: the state a parameter gets, key -> (shape, value);
    * ``_check_requirements()``: raise ValueError when the hyperparameters conflict;
    * ``_mlx_update(factored)``: the MLX-ops update method of a layout;
    * ``_fused_update(key)``: the fused-kernel update of a static configuration, or None;
    * ``_kernel_tables()``: the module's :class:`KernelTables`, read at each launch.
    """

    _STATE_CLASSES: Mapping[str, str] = {}

    def __init__(self, *, backend: str = "auto", precision: str = "float32",
                 nonfinite: str = "propagate", stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__()
        self._stochastic_rounding = False
        self.precision = precision
        self.nonfinite = nonfinite
        self.stochastic_rounding = stochastic_rounding
        self.seed = seed
        self._rounding_salt = 0
        self._stacked: dict[int, mx.array] = {}
        self._memo_step: mx.array | None = None
        self._memo: dict = {}
        self.backend = backend
        self._shardings: dict[str, Sharding] = {}
        self._sharded: dict[int, Sharding] = {}  # by id of the state slot, during a step
        self._shard: ShardedAxis | None = None  # of the parameter being updated

    # Sharded parameters.
    def set_sharding(self, shardings: Mapping[str, Sharding] | Any) -> None:
        """Which parameters are split across processes: ``{path: Sharding(axis, group)}``
        (paths as ``tree_flatten`` writes them), or a model, whose MLX sharded modules say
        (``shardings_of(model)``). Every reduction of the update over a sharded axis is then
        completed across its group (partial sums and one ``all_sum``, a mean divided by
        the whole count), so each process's slice steps as the whole parameter would;
        reductions along other axes stay local, and state is split like its parameter.
        An unsharded parameter costs nothing extra."""
        if hasattr(shardings, "named_modules"):  # a model (an nn.Module is a dict too)
            shardings = shardings_of(shardings)
        for path, sharding in shardings.items():
            if not isinstance(sharding, Sharding) or isinstance(sharding.axis, bool) or \
                    not isinstance(sharding.axis, numbers.Integral):
                raise ValueError(f"the sharding of '{path}' must be a Sharding(axis, group) "
                                 f"with an int axis, got {sharding!r}")
        self._shardings = dict(shardings)

    # Options: validated whenever they are set, at construction or between steps.
    @property
    def precision(self) -> str:
        """``"float32"`` or ``"param"`` (state and math in the parameter's dtype)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        value = check_choice("precision", value, PRECISIONS)
        if self._stochastic_rounding and value != "float32":
            raise ValueError("stochastic_rounding needs precision='float32' (it rounds the "
                             "float32 result when writing a bfloat16 parameter)")
        self._precision = value

    @property
    def nonfinite(self) -> str:
        """``"propagate"``, ``"skip"`` or ``"raise"``: what a step with a NaN or Inf
        gradient does."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        self._nonfinite = check_choice("nonfinite", value, NONFINITE)
        if value == "skip" and "skipped_steps" not in self.state:
            self.state["skipped_steps"] = mx.array(0, mx.uint64)

    @property
    def stochastic_rounding(self) -> bool:
        return self._stochastic_rounding

    @stochastic_rounding.setter
    def stochastic_rounding(self, value: bool) -> None:
        value = check_bool("stochastic_rounding", value)
        if value and self.precision != "float32":
            raise ValueError("stochastic_rounding needs precision='float32' (it rounds the "
                             "float32 result when writing a bfloat16 parameter)")
        self._stochastic_rounding = value

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = check_seed(value)

    @property
    def backend(self) -> str:
        """The backend in use: ``"mlx"``, ``"metal"`` or ``"cuda"`` (``"auto"`` resolved)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = resolve_backend(value)

    # Hooks a generated class provides.
    def _factor_axes(self, shape: tuple) -> Axes:
        raise NotImplementedError

    def _static_key(self, factored: bool) -> tuple:
        raise NotImplementedError

    def _state_shapes(self, shape: tuple, axes: Axes) -> dict:
        raise NotImplementedError

    def _initial_state(self, shape: tuple, axes: Axes) -> dict:
        raise NotImplementedError

    def _check_requirements(self) -> None:
        return None

    def _mlx_update(self, factored: bool) -> Callable:
        raise NotImplementedError

    def _fused_update(self, key: tuple) -> Callable | None:
        raise NotImplementedError

    def _stacks(self, key: tuple) -> bool:
        """Whether same-shape tensors of this static configuration are updated as one
        stack with fused kernels (see ``_update_stacks``)."""
        raise NotImplementedError

    def _kernel_tables(self) -> KernelTables:
        raise NotImplementedError

    # Writing parameters.
    def _rounding_key(self, parameter: mx.array) -> mx.array | None:
        """The key of this parameter's rounding noise at this step, or None when writes
        round to nearest; each call draws a new place in the tree."""
        if not self.stochastic_rounding or parameter.dtype != mx.bfloat16:
            return None
        self._rounding_salt += 1
        salt = self._rounding_salt
        if self._shard is not None:  # each slice of a sharded parameter draws its own
            salt += (self._shard.group.rank() + 1) << 20
        return rounding_key(self.seed, salt, self.step)

    def _write_parameter(self, value: Any, parameter: mx.array) -> mx.array:
        """The new parameter in its own dtype: stochastically rounded if asked for."""
        key = self._rounding_key(parameter)
        if key is None:
            return collapse(value, parameter, "full")
        full = mx.broadcast_to(cast(mx.array(value), mx.float32), parameter.shape)
        return stochastic_bfloat16(full, key)

    def _kernel_rounding_key(self, parameter: mx.array) -> mx.array | float:
        """The rounding key as the float32 whose bits it is (kernels take their scalars
        as float32); 0.0 means round to nearest."""
        key = self._rounding_key(parameter)
        return 0.0 if key is None else key.view(mx.float32)

    # Reductions of the MLX-ops update (``of``: the operand's shape class, compact
    # layout): precision="param" is MLX's own optimizers, bit for bit, so it reduces as
    # they do; float32 math reduces accurately at any size. Across a sharded axis each
    # process reduces its slice and the group completes it.
    def _crossing(self, x: Any, axis: int | Sequence[int] | None, of: str) -> bool:
        return self._shard is not None and self._shard.crosses(of, axis, getattr(x, "ndim", 0))

    def _sum(self, x: Any, axis: int | Sequence[int] | None = None,
             of: str = "full") -> mx.array:
        local = mx.sum(x, axis=axis) if self.precision == "param" else total(x, axis)
        return completed(local, self._shard, self._crossing(x, axis, of), "sum")

    def _mean(self, x: Any, axis: int | Sequence[int] | None = None,
              of: str = "full") -> mx.array:
        if self._crossing(x, axis, of):
            local = self._sum(x, axis, of)
            count = getattr(x, "size", 1) // max(local.size, 1)
            return local / (count * self._shard.group.size())
        if self.precision == "param":
            return mx.mean(x, axis=axis)
        return mean(x, axis)

    def _whole_matrix(self) -> None:
        """A matrix block (matrix products) needs the whole matrix: refuse a slice."""
        if self._shard is not None:
            raise ValueError(f"{type(self).__name__} multiplies matrices, which needs each "
                             "parameter whole: a sharded parameter cannot be updated by it "
                             "(gather it, or leave it out of set_sharding)")

    def _max(self, x: Any, axis: int | Sequence[int] | None = None,
             of: str = "full") -> mx.array:
        return completed(mx.max(x, axis=axis), self._shard, self._crossing(x, axis, of), "max")

    def _min(self, x: Any, axis: int | Sequence[int] | None = None,
             of: str = "full") -> mx.array:
        return completed(mx.min(x, axis=axis), self._shard, self._crossing(x, axis, of), "min")

    # Fused kernels of the generated module.
    def _geometry(self, shape: Sequence[int], factored: bool, rows_per_group: int,
                  cols_per_group: int, backend: str, tensors: int = 1) -> Geometry:
        if backend == "mlx":
            rows_per_group = cols_per_group = None
        return geometry(shape, factored, rows_per_group, cols_per_group,
                        self._kernel_tables().threads, tensors, self._shard)

    def _launch(self, backend: str, name: str, geo: Geometry, inputs: list[mx.array],
                outputs: list[tuple[tuple, mx.Dtype]], T: mx.Dtype, S: mx.Dtype
                ) -> list[mx.array]:
        return launch(self._kernel_tables(), backend, name, geo, inputs, outputs, T, S)

    # Values the same for every parameter of a step, computed once per step: eagerly,
    # every MLX op is a dispatch (under mx.compile the duplicates would be merged anyway).
    def _per_step(self, function: Callable[[Any], tuple]) -> tuple:
        """``function(self)``, a generated driver's step values, once per step (the memo
        is new whenever ``step`` is a new array, which every step makes)."""
        step = self.state.get("step")
        if self._memo_step is not step:
            self._memo_step, self._memo = step, {}
        if function not in self._memo:
            self._memo[function] = function(self)
        return self._memo[function]

    # MLX's Optimizer API.
    def init_single(self, parameter: mx.array, state: dict) -> None:
        """Initialize optimizer state; a leaf this class cannot train gets none."""
        if not trainable(parameter):
            return
        dtype = mx.float32 if self.precision == "float32" else parameter.dtype
        shape = tuple(parameter.shape)
        for key, (state_shape, value) in self._initial_state(shape,
                                                             self._factor_axes(shape)).items():
            state[key] = mx.full(state_shape, value, dtype=dtype)

    def apply_gradients(self, gradients: dict, parameters: dict) -> Any:
        """Check every gradient against its parameter and state, then update. The step
        runs on a staged copy of the state (``self.state`` returns it meanwhile, since the
        updates read ``step`` and schedules there) that is merged into the live containers
        only when every parameter succeeded: a bad tree or checkpoint raises ValueError
        naming the parameter, and a step that raises for any reason changes nothing,
        ``step`` and schedules included. Non-finite gradients are handled as ``nonfinite``
        says; zero-size parameters are kept as they are."""
        gradients = tree_map(as_array, gradients)
        live, initialized = self._state, self._initialized
        self._state = copy_containers(live)
        try:
            updated, staged = self._staged_step(gradients, parameters)
        except BaseException:
            self._initialized = initialized
            raise
        finally:
            self._state = live
            self._memo_step, self._memo = None, {}
        merge_into(live, staged)
        return updated

    def _staged_step(self, gradients: Any, parameters: Any) -> tuple[Any, dict]:
        """The step on ``self.state``, the staged copy: checks, initialisation, the
        schedules at the step before the increment (as in MLX), the update. Returns the
        new parameters and the state to commit."""
        found = leaves(gradients, parameters, self.state)
        owner = type(self).__name__
        for name, gradient, parameter, slot in found:
            check_leaf(name, gradient, parameter, owner)
            if slot is not None:
                shape = tuple(parameter.shape)
                check_slot(name, parameter, slot,
                           self._state_shapes(shape, self._factor_axes(shape)),
                           self.precision, owner)
        if not self._initialized:  # first step, or a state assigned (e.g. a checkpoint)
            check_assigned_state(self.state, found, self.init_single)
        sharded = {name: self._shardings[name] for name, *_ in found if name in self._shardings}
        for name, gradient, *_ in found:
            if name in sharded and gradient.ndim == 0:
                raise ValueError(f"parameter '{name}' is 0-D: it has no axis to shard")
        groups = list({id(s.group): s.group for s in sharded.values()
                       if s.group.size() > 1}.values())
        finite = finite_flag(found, self.nonfinite, groups)
        if not self._initialized or any(slot is None for *_, slot in found):
            self.init(gradients)
        before = copy_containers(self.state) if finite is not None else None
        for param, scheduler in self._schedulers.items():
            self.state[param] = scheduler(self.step)
        self.state["step"] = self.step + 1
        self._rounding_salt = 0  # each parameter of the tree draws its own rounding noise
        current = leaves(gradients, parameters, self.state)
        self._sharded = {id(slot): sharded[name] for name, *_, slot in current
                         if name in sharded}
        self._stacked = self._update_stacks(current)
        updated = tree_map(lambda g, p, s: self._update_or_keep(g, p.tree, s.tree),
                           gradients, Beside(parameters), Beside(self.state))
        if finite is None:
            return updated, self.state
        return keep_unless_finite(finite, updated, parameters, self.state, before)

    def _update_or_keep(self, gradient: mx.array, parameter: mx.array, state: dict
                        ) -> mx.array:
        """A zero-size parameter has nothing to update: keep it and its initialised state.
        Running the update would launch empty kernel grids and, as in MLX's own optimizer,
        fill the non-empty factored state of an empty matrix with NaN (a mean over an
        empty axis)."""
        if gradient.size == 0:
            return parameter
        if id(state) in self._stacked:
            return self._stacked.pop(id(state))
        return self.apply_single(gradient, parameter, state)

    def _update_stacks(self, found: list[Leaf]) -> dict[int, mx.array]:
        """With fused kernels, update tensors of one static configuration, shape, dtype
        and state layout (up to ``STACK_MAX_ELEMENTS`` each) as one stack, where the
        configuration has glue between passes (``_stacks``): that glue then runs once per
        stack and each pass launches once, instead of once per tensor. Returns the new
        parameters by the id of their state dict, whose entries it has replaced (views of
        the stack's results)."""
        if self.backend == "mlx":
            return {}
        stacks: dict[tuple, list[tuple[mx.array, mx.array, dict]]] = {}
        for _, gradient, parameter, state in found:
            if not (0 < gradient.size <= STACK_MAX_ELEMENTS and isinstance(state, dict)) or (
                    self.stochastic_rounding and parameter.dtype == mx.bfloat16):
                continue  # each bfloat16 write draws its own rounding key
            if id(state) in self._sharded:
                continue  # its reductions are completed across processes, on their own
            if any(self._STATE_CLASSES.get(k) not in ("full", "row", "col") for k in state):
                continue
            shape = tuple(gradient.shape)
            axes = self._factor_axes(shape)
            static_key = self._static_key(axes is not None)
            if self._fused_update(static_key) is None or not self._stacks(static_key):
                continue
            layout = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(state.items()))
            key = (static_key, axes, shape, gradient.dtype, parameter.dtype, layout)
            stacks.setdefault(key, []).append((gradient, parameter, state))
        updated: dict[int, mx.array] = {}
        for (static_key, axes, *_), members in stacks.items():
            if len(members) > 1:
                new = self._update_stack(self._fused_update(static_key), axes, members)
                updated.update((id(state), value) for (*_, state), value in zip(members, new))
        return updated

    def _update_stack(self, function: Callable, axes: Axes,
                      members: list[tuple[mx.array, mx.array, dict]]) -> list[mx.array]:
        """One fused update of ``members`` stacked on a new leading axis (factored axes
        last, as ``reoriented`` views them); each member's state gets its slice back."""
        ndim = members[0][0].ndim
        moved = axes is not None and tuple(axes) != (ndim - 2, ndim - 1)

        def view(x: mx.array, shape_class: str) -> mx.array:
            return mx.transpose(x, view_permutation(axes, ndim, shape_class)) if moved else x

        def back(x: mx.array, shape_class: str) -> mx.array:
            return mx.transpose(x, inverse(view_permutation(axes, ndim, shape_class))) \
                if moved else x

        classes = self._STATE_CLASSES
        state = {key: mx.stack([view(s[key], classes[key]) for *_, s in members])
                 for key in members[0][2]}
        new = function(self, mx.stack([view(g, "full") for g, _, _ in members]),
                       mx.stack([view(p, "full") for _, p, _ in members]), state,
                       self.backend, len(members))
        # Split, not indexed: slices are views, an index would be a gather kernel each.
        parts = {key: mx.split(value, len(members)) for key, value in state.items()}
        for index, (*_, own) in enumerate(members):
            own.update({key: back(value[index].squeeze(0), classes[key])
                        for key, value in parts.items()})
        return [back(new_part.squeeze(0), "full") for new_part in mx.split(new, len(members))]

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        """The update function of this parameter's static configuration, run with the
        factored axes last (and, for a sharded parameter, reductions completed across
        its group)."""
        axes = self._factor_axes(tuple(gradient.shape))
        self._shard = view_sharding(self._sharded.get(id(state)), gradient.ndim, axes)
        try:
            return self._apply(gradient, parameter, state, axes)
        finally:
            self._shard = None

    def _apply(self, gradient: mx.array, parameter: mx.array, state: dict, axes: Axes
               ) -> mx.array:
        """``apply_single`` once the parameter's sharded axis is known."""
        key = self._static_key(axes is not None)
        backend = self.backend
        function = self._fused_update(key)
        if backend == "mlx" and (self.precision == "param" or function is None
                                 or gradient.size < PLANNED_MIN_ELEMENTS):
            # The spec's own program, as MLX writes its optimizers (in the parameter's
            # dtype under precision="param"); float32 math on a large parameter runs the
            # fused plan with the kernels' MLX twins instead (see PLANNED_MIN_ELEMENTS).
            update = self._mlx_update(axes is not None)
            return reoriented(update, axes, gradient, parameter, state, self._STATE_CLASSES)
        if function is None:
            self._check_requirements()
            raise ValueError(f"no specialisation for static configuration {key}")

        def fused(g: mx.array, p: mx.array, s: dict) -> mx.array:
            return function(self, g, p, s, backend)

        return reoriented(fused, axes, gradient, parameter, state, self._STATE_CLASSES)
