"""What several tests share: bit-exact tree comparison, stepping an optimizer, a small
model and its training step (compiled as mlx-lm compiles it: model and optimizer state
as the compiled function's inputs and outputs), every generated class, and running a
generated module's fused kernels on the CPU executor, and one multi-process job at a
time."""
import contextlib
import fcntl
import importlib
import inspect
import tempfile
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from afgen.check.kernel_runner import cpu_kernels

BACKENDS = ["mlx", "metal", "cuda"]
GENERATED = sorted(path.stem for path in (Path(__file__).resolve().parent.parent /
                                          "generated").glob("*.py")
                   if path.stem not in ("__init__", "afgen_runtime", "afgen_targets"))


def tree_bits(tree) -> dict:
    """Every leaf as (dtype, shape, raw bytes): equality means bit-identical."""
    mx.eval(tree)
    return {k: (str(v.dtype), tuple(v.shape), np.array(v.view(mx.uint16) if v.dtype ==
                                                      mx.bfloat16 else v).tobytes())
            for k, v in tree_flatten(tree)}


def relative_error(ours, theirs) -> float:
    """The largest difference relative to the largest magnitude of the reference tensor
    (state tensors are small, so an absolute floor would hide their errors)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


def compiled_steps(opt, params, grads_list):
    """Apply each gradient tree in turn through one ``mx.compile``d step that takes the
    parameters and the optimizer state as implicit inputs and outputs, as training loops
    do; returns the parameters, evaluated."""
    holder = {"p": dict(params)}
    opt.init(holder["p"])
    state = [holder, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(g):
        holder["p"] = opt.apply_gradients(g, holder["p"])

    for grads in grads_list:
        step(grads)
    mx.eval(holder["p"], opt.state)
    return holder["p"]


def run_steps(opt, params, grads_list):
    """Apply each gradient tree in turn; returns the parameters, evaluated."""
    for grads in grads_list:
        params = opt.apply_gradients(grads, params)
    mx.eval(params, opt.state)
    return params


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 12)
        self.l2 = nn.Linear(12, 3)
        self.scale = mx.array(1.0)

    def __call__(self, x):
        return self.l2(nn.relu(self.l1(x))) * self.scale


def training_step(model: nn.Module, opt, compiled: bool):
    """``step(x, y) -> loss``: one MSE gradient step of ``model`` with ``opt``."""
    def loss_fn(m, x, y):
        return nn.losses.mse_loss(m(x), y)

    def step(x, y):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    if compiled:
        state = [model.state, opt.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    return step


def generated_class(stem):
    """(module, constructor) of ``generated/<stem>.py``'s optimizer; a required
    learning_rate is given (0.01), every other argument may be passed."""
    module = importlib.import_module(f"generated.{stem}")
    (cls,) = [v for v in vars(module).values() if isinstance(v, type)
              and issubclass(v, optim.Optimizer) and v is not optim.Optimizer]
    lr = inspect.signature(cls).parameters.get("learning_rate")
    return module, partial(cls, 0.01) if lr is not None and lr.default is lr.empty else cls


def generated_optimizer(stem):
    """(module, class) of ``generated/<stem>.py``: the class itself, its arguments free."""
    module, make = generated_class(stem)
    return module, make.func if isinstance(make, partial) else make


@contextlib.contextmanager
def backend_context(module, backend):
    """Fused backends run on the CPU executor; construct optimizers inside the block."""
    if backend == "mlx":
        yield
        return
    with cpu_kernels(module):
        yield


@contextlib.contextmanager
def one_launch_at_a_time():
    """One ``mlx.launch`` job at a time on this machine (pytest-xdist runs tests side by
    side): the ring backend's processes wait for each other actively, so two jobs sharing
    the cores take minutes instead of seconds."""
    with open(Path(tempfile.gettempdir()) / "afgen-mlx-launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
