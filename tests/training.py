"""A small model and the compiled training step the tests share (state captured as
mlx-lm captures it: model and optimizer state as the compiled function's inputs and
outputs)."""
from functools import partial

import mlx.core as mx
import mlx.nn as nn


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
