"""What several tests share: bit-exact tree comparison, stepping an optimizer, a small
model and its training step (compiled as mlx-lm compiles it: model and optimizer state
as the compiled function's inputs and outputs)."""
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten


def tree_bits(tree) -> dict:
    """Every leaf as (dtype, shape, raw bytes): equality means bit-identical."""
    mx.eval(tree)
    return {k: (str(v.dtype), tuple(v.shape), np.array(v.view(mx.uint16) if v.dtype ==
                                                      mx.bfloat16 else v).tobytes())
            for k, v in tree_flatten(tree)}


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
