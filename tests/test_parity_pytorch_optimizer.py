"""Specs of optimizers beyond MLX against pytorch-optimizer (pinned, torch on the CPU):
the same parameters, gradients and options, 25 steps on 0-D to 4-D parameters, eager and
compiled, MLX ops and the fused kernels (on the CPU executor)."""
import mlx.core as mx
import numpy as np
import pytest
import pytorch_optimizer
import torch
from helpers import backend_context, compiled_steps, generated_class, relative_error

SHAPES = {"s": (), "v": (7,), "m": (5, 9), "t": (2, 3, 4), "q": (2, 1, 3, 5)}

# Per spec: the pytorch-optimizer class, and pairs of (our options, theirs) that set every
# option the spec takes.
CASES = {
    "adopt": (pytorch_optimizer.ADOPT, [
        (dict(), dict()),
        (dict(learning_rate=1e-2, betas=[0.8, 0.99], weight_decay=0.01),
         dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)),
        (dict(weight_decay=0.1, weight_decouple=True),
         dict(weight_decay=0.1, weight_decouple=True)),
        (dict(learning_rate=1e-2, weight_decay=0.1, weight_decouple=True, fixed_decay=True),
         dict(lr=1e-2, weight_decay=0.1, weight_decouple=True, fixed_decay=True)),
        (dict(clip=False, eps=1e-4), dict(clip_lambda=None, eps=1e-4)),
        (dict(maximize=True, weight_decay=0.01), dict(maximize=True, weight_decay=0.01)),
    ]),
    "ademamix": (pytorch_optimizer.AdEMAMix, [
        (dict(), dict()),
        (dict(learning_rate=1e-2, betas=[0.8, 0.99, 0.999], alpha=2.0, eps=1e-6,
              weight_decay=0.01),
         dict(lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=2.0, eps=1e-6, weight_decay=0.01)),
        (dict(t_alpha_beta3=10.0, weight_decay=0.1, weight_decouple=True),
         dict(t_alpha_beta3=10.0, weight_decay=0.1, weight_decouple=True)),
        (dict(t_alpha_beta3=100.0, betas=[0.9, 0.999, 0.99], weight_decay=0.1,
              weight_decouple=True, fixed_decay=True, maximize=True),
         dict(t_alpha_beta3=100.0, betas=(0.9, 0.999, 0.99), weight_decay=0.1,
              weight_decouple=True, fixed_decay=True, maximize=True)),
    ]),
    "came": (pytorch_optimizer.CAME, [
        (dict(), dict()),
        (dict(learning_rate=1e-3, betas=[0.8, 0.99, 0.999], clip_threshold=0.5,
              weight_decay=0.01, eps1=1e-20, eps2=1e-12),
         dict(lr=1e-3, betas=(0.8, 0.99, 0.999), clip_threshold=0.5, weight_decay=0.01,
              eps1=1e-20, eps2=1e-12)),
        (dict(ams_bound=True, weight_decay=0.1, fixed_decay=True),
         dict(ams_bound=True, weight_decay=0.1, fixed_decay=True)),
        (dict(weight_decouple=False, weight_decay=0.1, maximize=True),
         dict(weight_decouple=False, weight_decay=0.1, maximize=True)),
    ]),
    "lamb": (pytorch_optimizer.Lamb, [
        (dict(), dict()),
        (dict(learning_rate=1e-2, betas=[0.8, 0.99], eps=1e-4, weight_decay=0.01),
         dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.01)),
        (dict(weight_decouple=False, weight_decay=0.1, grad_averaging=False, maximize=True),
         dict(weight_decouple=False, weight_decay=0.1, grad_averaging=False, maximize=True)),
        (dict(weight_decay=0.1, fixed_decay=True, adam=True),
         dict(weight_decay=0.1, fixed_decay=True, adam=True)),
        # Rectified: no step before n_sma reaches the threshold (step 6 with beta2=0.999),
        # or a momentum step with degenerated_to_sgd; with beta2=0.9, n_sma reaches 9 at
        # step 12; with beta2=0 it is 1 at every step.
        (dict(rectify=True, weight_decay=0.01), dict(rectify=True, weight_decay=0.01)),
        (dict(rectify=True, degenerated_to_sgd=True, n_sma_threshold=8, learning_rate=1e-2,
              weight_decouple=False, weight_decay=0.1),
         dict(rectify=True, degenerated_to_sgd=True, n_sma_threshold=8, lr=1e-2,
              weight_decouple=False, weight_decay=0.1)),
        (dict(rectify=True, betas=[0.9, 0.9], n_sma_threshold=9),
         dict(rectify=True, betas=(0.9, 0.9), n_sma_threshold=9)),
        (dict(rectify=True, degenerated_to_sgd=True, betas=[0.9, 0.0]),
         dict(rectify=True, degenerated_to_sgd=True, betas=(0.9, 0.0))),
    ]),
    "mars": (pytorch_optimizer.MARS, [
        (dict(), dict()),
        (dict(learning_rate=1e-2, betas=[0.9, 0.95], gamma=0.05, weight_decay=0.01,
              lr_1d=5e-3, betas_1d=[0.8, 0.9], weight_decay_1d=0.05),
         dict(lr=1e-2, betas=(0.9, 0.95), gamma=0.05, weight_decay=0.01, lr_1d=5e-3,
              betas_1d=(0.8, 0.9), weight_decay_1d=0.05)),
        (dict(optimize_1d=True, ams_bound=True, eps=1e-6),
         dict(optimize_1d=True, ams_bound=True, eps=1e-6)),
        (dict(weight_decouple=False, weight_decay=0.1, maximize=True),
         dict(weight_decouple=False, weight_decay=0.1, maximize=True)),
        (dict(weight_decay=0.1, fixed_decay=True), dict(weight_decay=0.1, fixed_decay=True)),
    ]),
}
# State a reference keeps only for logging, which the spec's header lists as not kept:
# pytorch-optimizer's Lamb stores the last step's norms and trust ratio.
NOT_KEPT = {"lamb": {"weight_norm", "adam_norm", "trust_ratio"}}
PARAMS = [(stem, i) for stem, (_, configs) in CASES.items() for i in range(len(configs))]


def _data(seed: int, steps: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)

    def tree() -> dict:
        return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}

    return tree(), [tree() for _ in range(steps)]


def _theirs(cls, options: dict, params: dict, grads: list[dict]):
    """pytorch-optimizer's parameters and state after the steps, as NumPy."""
    tensors = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = cls(list(tensors.values()), **options)
    for g in grads:
        for k, p in tensors.items():
            p.grad = torch.tensor(g[k])
        opt.step()
    state = {k: {key: value.numpy() for key, value in opt.state[p].items()
                 if isinstance(value, torch.Tensor)} for k, p in tensors.items()}
    return {k: p.detach().numpy() for k, p in tensors.items()}, state


def _ours(module, make, options: dict, backend: str, params: dict, grads: list[dict]
          ) -> tuple[dict, dict]:
    """The generated optimizer's parameters and state after the steps."""
    with backend_context(module, backend):
        opt = make(**options, backend=backend)
        p = {k: mx.array(v) for k, v in params.items()}
        for g in grads:
            p = opt.apply_gradients({k: mx.array(v) for k, v in g.items()}, p)
        mx.eval(p, opt.state)
    return p, opt.state


def _assert_close(stem: str, ours_params: dict, ours_state: dict, theirs: tuple) -> None:
    """Every parameter and state tensor within 2e-5 relative of the reference."""
    theirs_params, theirs_state = theirs
    for k in SHAPES:
        assert relative_error(ours_params[k], theirs_params[k]) <= 2e-5, k
        kept = {key: v for key, v in theirs_state[k].items() if key not in NOT_KEPT.get(stem, ())}
        assert set(kept) <= set(ours_state[k]), k
        for key, value in kept.items():
            assert tuple(ours_state[k][key].shape) == value.shape, (k, key)
            assert relative_error(ours_state[k][key], value) <= 2e-5, (k, key)


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
@pytest.mark.parametrize("stem,index", PARAMS)
def test_matches_pytorch_optimizer(stem, index, backend):
    module, make = generated_class(stem)
    cls, configs = CASES[stem]
    ours_options, theirs_options = configs[index]
    params, grads = _data(index, 25 if backend == "mlx" else 3)
    p, state = _ours(module, make, ours_options, backend, params, grads)
    _assert_close(stem, p, state, _theirs(cls, theirs_options, params, grads))


@pytest.mark.parametrize("stem,index", [(stem, 1) for stem in sorted(CASES)] + [("lamb", 4)])
def test_compiled_step_matches_pytorch_optimizer(stem, index):
    _, make = generated_class(stem)
    cls, configs = CASES[stem]
    ours_options, theirs_options = configs[index]
    params, grads = _data(5, 25)
    opt = make(**ours_options)
    mx_params = {k: mx.array(v) for k, v in params.items()}
    mx_grads = [{k: mx.array(v) for k, v in g.items()} for g in grads]
    _assert_close(stem, compiled_steps(opt, mx_params, mx_grads), opt.state,
                  _theirs(cls, theirs_options, params, grads))


# SM3: pytorch-optimizer keeps one accumulator per axis; the spec's cover sets are the rows
# and columns of each matrix (specs/sm3.yaml lists the differences). So a parameter of 3+
# dimensions is compared with pytorch-optimizer's SM3 on each of its matrices, and a 0-D
# parameter only where beta is 0 (with beta > 0 pytorch-optimizer drops the running max for
# 0-D tensors alone).
SM3_CONFIGS = [
    (dict(), dict()),
    (dict(learning_rate=1e-2, momentum=0.9), dict(lr=1e-2, momentum=0.9)),
    (dict(momentum=0.3, beta=0.5, eps=1e-8, maximize=True),
     dict(momentum=0.3, beta=0.5, eps=1e-8, maximize=True)),
    (dict(learning_rate=1e-3, beta=0.9), dict(lr=1e-3, beta=0.9)),
]


def _sm3_theirs(options: dict, params: dict, grads: list[dict]) -> tuple[dict, dict]:
    """pytorch-optimizer's SM3 on every matrix of each parameter (on the parameter itself
    up to 2-D), put back together: parameters, and state under the spec's keys and shapes."""
    slices = {(k, idx): None for k, v in params.items()
              for idx in (np.ndindex(v.shape[:-2]) if v.ndim > 2 else [()])}
    tensors = {key: torch.nn.Parameter(torch.tensor(params[key[0]][key[1]]))
               for key in slices}
    opt = pytorch_optimizer.SM3(list(tensors.values()), **options)
    for g in grads:
        for (k, idx), p in tensors.items():
            p.grad = torch.tensor(g[k][idx])
        opt.step()
    out_params, out_state = {}, {}
    for k, v in params.items():
        keys = [key for key in slices if key[0] == k]
        shape = v.shape[:-2] if v.ndim > 2 else ()

        def gather(read, keys=keys, shape=shape):
            return np.stack([read(tensors[key]) for key in keys]).reshape(
                shape + read(tensors[keys[0]]).shape)

        out_params[k] = gather(lambda p: p.detach().numpy())
        state = {"momentum_buffer": gather(lambda p: opt.state[p]["momentum_buffer"].numpy())}
        if v.ndim >= 2:
            state["accumulator_0"] = gather(lambda p: opt.state[p]["accumulator_0"].numpy()
                                            .reshape(-1))
            state["accumulator_1"] = gather(lambda p: opt.state[p]["accumulator_1"].numpy()
                                            .reshape(-1))
        else:
            state["accumulator"] = opt.state[tensors[keys[0]]]["accumulator_0"].numpy()
        out_state[k] = state
    return out_params, out_state


def _sm3_assert_close(options: dict, ours_params: dict, ours_state: dict,
                      theirs: tuple) -> None:
    theirs_params, theirs_state = theirs
    for k in SHAPES:
        if k == "s" and options.get("beta", 0) > 0:
            continue
        assert relative_error(ours_params[k], theirs_params[k]) <= 2e-5, k
        for key, value in theirs_state[k].items():
            assert tuple(ours_state[k][key].shape) == value.shape, (k, key)
            assert relative_error(ours_state[k][key], value) <= 2e-5, (k, key)


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
@pytest.mark.parametrize("index", range(len(SM3_CONFIGS)))
def test_sm3_matches_pytorch_optimizer_per_matrix(index, backend):
    module, make = generated_class("sm3")
    ours_options, theirs_options = SM3_CONFIGS[index]
    params, grads = _data(index, 25 if backend == "mlx" else 3)
    p, state = _ours(module, make, ours_options, backend, params, grads)
    _sm3_assert_close(ours_options, p, state, _sm3_theirs(theirs_options, params, grads))


def test_sm3_compiled_step_matches_pytorch_optimizer():
    _, make = generated_class("sm3")
    ours_options, theirs_options = SM3_CONFIGS[2]
    params, grads = _data(5, 25)
    opt = make(**ours_options)
    mx_params = {k: mx.array(v) for k, v in params.items()}
    mx_grads = [{k: mx.array(v) for k, v in g.items()} for g in grads]
    _sm3_assert_close(ours_options, compiled_steps(opt, mx_params, mx_grads), opt.state,
                      _sm3_theirs(theirs_options, params, grads))
