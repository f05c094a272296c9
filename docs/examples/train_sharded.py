"""Train a small model sharded across processes with MLX's own sharding and a generated
optimizer:

    mlx.launch --backend ring -n 2 python docs/examples/train_sharded.py

The model's layers are split across the processes by MLX's tensor-parallel layers: the
first linear layer's weight and bias by rows (``AllToShardedLinear``, axis 0), the second's
weight by columns (``ShardedToAllLinear``, its last axis). ``set_sharding(model)`` tells
the optimizer how MLX split them, so Adafactor's row and column means and RMS terms are
completed across the processes: the run matches one process training the whole model,
which this script also runs, and it prints how far apart the two end up.
"""
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's generated/
from generated.adafactor import Adafactor  # noqa: E402

STEPS = 20


def make_model() -> nn.Sequential:
    mx.random.seed(0)  # the same initial weights in every process
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))


def shard(model: nn.Sequential, group: mx.distributed.Group) -> nn.Sequential:
    first, relu, second = model.layers
    return nn.Sequential(nn.AllToShardedLinear.from_linear(first, group=group), relu,
                         nn.ShardedToAllLinear.from_linear(second, group=group))


def loss_fn(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
    return mx.mean(mx.square(model(x) - y))


def main() -> None:
    group = mx.distributed.init()
    rank = group.rank()

    model = shard(make_model(), group)
    optimizer = Adafactor()
    optimizer.set_sharding(model)  # which parameters MLX split, along which axis
    step = nn.value_and_grad(model, loss_fn)

    whole = make_model()  # the same training in one process, for comparison
    whole_optimizer = Adafactor()
    whole_step = nn.value_and_grad(whole, loss_fn)

    rng = np.random.default_rng(1)
    for index in range(STEPS):
        x = mx.array(rng.standard_normal((32, 16)).astype(np.float32))
        y = mx.array(rng.standard_normal((32, 8)).astype(np.float32))
        loss, grads = step(model, x, y)  # each process's gradients are of its slices
        optimizer.update(model, grads)
        whole_loss, whole_grads = whole_step(whole, x, y)
        whole_optimizer.update(whole, whole_grads)
        mx.eval(model.parameters(), optimizer.state, whole.parameters())
        if rank == 0 and index % 5 == 4:
            print(f"step {index + 1}: loss {loss.item():.5f} (one process: "
                  f"{whole_loss.item():.5f})")

    difference = 0.0
    for (_, part), (_, full) in zip(tree_flatten(model.parameters()),
                                    tree_flatten(whole.parameters())):
        full = np.array(full)
        axis = next((a for a in range(full.ndim) if part.shape[a] != full.shape[a]), None)
        if axis is not None:  # this process's slice of the whole parameter
            width = part.shape[axis]
            full = np.take(full, range(rank * width, (rank + 1) * width), axis=axis)
        difference = max(difference, float(np.max(np.abs(np.array(part) - full))))
    difference = mx.distributed.all_max(mx.array(difference), group=group).item()
    if rank == 0:
        print(f"largest difference from one process: {difference:.2e}")


if __name__ == "__main__":
    main()
