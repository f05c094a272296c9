"""Edge shapes on every backend, against the float64 oracle (as ``afgen verify`` compares).

Empty parameters (a zero-size dimension) are a no-op update: the parameter and its state
(initialised with the right shapes) stay as they are, and the fused backends launch no
kernel for them. mlx.optimizers.Adafactor returns the same (empty) parameter but writes NaN
into the non-empty factored state of an empty matrix (the mean over an empty axis), e.g.
``exp_avg_sq_col`` of a (0, 5) parameter; the generated class keeps it at its initial zeros.

Thin matrices and large batches: the CPU executor runs one real thread per GPU thread,
and one Metal step (beta_1 set, float32) of a 100000 x 1 parameter took 79 s there
(1 x 100000: 9 s; 512 x 2 x 3: 12 s; CUDA about three times as long). So the MLX-ops
backend takes 1 x 100000, 100000 x 1 and 512 x 2 x 3, and the fused backends on the
executor take 1 x 5000, 5000 x 1 (0.6 s and 4 s a Metal step) and 64 x 2 x 3, which
exercise the same code paths (several row blocks, column chunks and batch threadgroups).
"""
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from afgen.check.kernel_runner import cpu_kernels
from afgen.check.verify import verify_class

EMPTY = [(0,), (0, 5), (4, 0), (2, 0, 3)]
ONE = [(1,), (1, 1), ()]
BATCHED = [(512, 2, 3)]
THIN_MLX = [(1, 100000), (100000, 1)]
THIN_EXECUTOR = [(1, 5000), (5000, 1)]
BATCHED_EXECUTOR = [(64, 2, 3)]


def _plan(compiled, scale=True, beta_1=True):
    for plan in compiled.plans:
        c = plan.config
        if c.factored and c.get("has_beta_1") == beta_1 and c.get("scale_parameter") == scale:
            return plan
    raise AssertionError("no such plan")


# (plan, run-time options): relative_step is an if in the glue, not a specialisation.
PLANS = {"default-beta_1": ({}, dict(relative_step=True, warmup_init=False)),
         "lr-no-scale": (dict(scale=False), dict(relative_step=False, warmup_init=False))}


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("group", ["empty", "one", "batched", "thin"])
def test_mlx_backend_matches_oracle(compiled, module, plan_name, group):
    shapes = {"empty": EMPTY, "one": ONE, "batched": BATCHED, "thin": THIN_MLX}[group]
    # Empty parameters share the tree with ordinary ones: they must not disturb them.
    shapes = shapes + [(3, 4)] if group == "empty" else shapes
    selects, dynamic = PLANS[plan_name]
    result = verify_class(compiled, module.Adafactor, _plan(compiled, **selects),
                          "mlx", "float32", shapes, 3, seed=4, dynamic=dynamic)
    assert result.passed, result


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("group", ["empty-one", "thin", "batched"])
def test_fused_backends_match_oracle(compiled, module, backend, group):
    """Two steps each (the second reads the first's state), on the CPU executor."""
    shapes = {"empty-one": EMPTY + ONE + [(3, 4)], "thin": THIN_EXECUTOR,
              "batched": BATCHED_EXECUTOR}[group]
    with cpu_kernels(module):
        result = verify_class(compiled, module.Adafactor, _plan(compiled), backend, "float32",
                              shapes, 2, seed=6)
    assert result.passed, result


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
def test_empty_parameters_are_a_no_op(module, backend):
    """No kernel launch, the same parameter back, state of the right shapes at its initial
    value after two steps; the parameters match mlx.optimizers.Adafactor's."""
    params = {f"p{i}": mx.zeros(shape) for i, shape in enumerate(EMPTY)}
    with cpu_kernels(module) as runner:
        opt = module.Adafactor(beta_1=0.9, weight_decay=0.01, backend=backend)
        out = params
        for _ in range(2):
            out = opt.apply_gradients(params, out)
        mx.eval(out, opt.state)
    assert sum(runner.launches.values()) == 0
    theirs = optim.Adafactor(beta_1=0.9, weight_decay=0.01)
    want = theirs.apply_gradients(params, params)
    for name, shape in zip(params, EMPTY):
        assert out[name].shape == want[name].shape == shape
        assert out[name].dtype == want[name].dtype
        assert {k: v.shape for k, v in opt.state[name].items()} == \
            {k: v.shape for k, v in theirs.state[name].items()}
    for key, value in tree_flatten(opt.state):
        if key != "step":
            assert not np.array(value).any(), key  # still the initial zeros, no NaN
    assert opt.step.item() == 2


def test_one_element_and_thin_parameters_match_mlx(module):
    """The MLX-ops backend against mlx.optimizers.Adafactor on 1-element and thin shapes
    (the oracle tests above compare single steps; this runs several)."""
    rng = np.random.default_rng(9)
    shapes = ONE + THIN_MLX + BATCHED
    params = {f"p{i}": mx.array(rng.standard_normal(s).astype(np.float32))
              for i, s in enumerate(shapes)}
    ours, theirs = module.Adafactor(beta_1=0.9, backend="mlx"), optim.Adafactor(beta_1=0.9)
    p_ours, p_theirs = params, params
    for _ in range(5):
        grads = {k: mx.array(rng.standard_normal(v.shape).astype(np.float32))
                 for k, v in params.items()}
        p_ours = ours.apply_gradients(grads, p_ours)
        p_theirs = theirs.apply_gradients(grads, p_theirs)
    mx.eval(p_ours, p_theirs)
    for name in params:
        a, b = np.array(p_ours[name], np.float64), np.array(p_theirs[name], np.float64)
        assert np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3)) <= 2e-4, name


def test_launch_grid_keeps_blocks_on_x():
    """CUDA caps grid y and z at 65535 blocks: a batch of 70000 matrices, or 2.1M+ rows,
    must not land there. Threadgroups run along x; the kernel decodes its tile from it."""
    from generated import adafactor

    for shape in [(70000, 2, 3), (3_000_000, 2)]:
        geo = adafactor._rt.geometry(shape, True, 32, 256, adafactor.THREADS)
        assert geo.grid[1:] == (1, 1)
        assert geo.grid[0] == geo.B * geo.nrb * geo.ncc * adafactor.THREADS
