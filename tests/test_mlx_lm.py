"""The generated optimizers as drop-ins on real mlx-lm models.

Three mlx-lm architectures are built in code from tiny random configs (no downloads, no
tokenizers):

* ``llama``: dense. Its model keeps ``layer_types``, a list of str, as a module
  attribute, so the gradient tree has ``[{}, {}]`` where the model has strings.
* ``qwen3_moe``: mixture of experts (``SwitchGLU``: the experts' weights stacked in 3-D
  arrays, routed with ``gather_mm``); every module attribute is an array.
* ``gpt_oss``: mixture of experts with biases everywhere, attention sinks (1-D) and
  ``layer_types`` (sliding and full attention), again a list of str.

They are trained

* in full, eagerly: ``nn.value_and_grad`` and ``opt.update(model, grads)``;
* partially, eagerly: a frozen base with some modules unfrozen; LoRA adapters from
  ``mlx_lm.tuner.utils.linear_to_lora_layers`` (``LoRASwitchLinear`` on the experts);
  QLoRA, the frozen base quantized by ``nn.quantize`` and the optimizer initialised on
  the whole model first (``opt.init(model.parameters())``, as ``Optimizer.init`` allows);
* in bfloat16 (the experts of the MoE models stay float32: the CPU's ``gather_mm`` takes
  float32 only), with ``precision="param"``;
* by mlx-lm's own loop, ``mlx_lm.tuner.trainer.train``, whose step is compiled with the
  model and optimizer state as its inputs and outputs (full and LoRA, with and without
  gradient accumulation).

Each run is repeated with the mlx.optimizers class of the same name, the same
hyperparameters, a copy of the same initial weights and the same batches; the loss at every
step, the final parameters and the optimizer state must agree.

Tolerances, float32: the generated update is MLX's formula evaluated in another order
(specialised expressions; fused kernels on Metal and CUDA), so one step's update can differ
from MLX's by a few float32 ulps (2**-23 = 1.2e-7 relative), and training feeds that back
through the model. Observed on the CPU over 10 steps: losses within 2e-7 relative,
parameters and state within 3e-6 of each leaf's largest magnitude (Adam and AdamW
bit-identical). ``LOSS_RTOL`` = 1e-5 and ``PARAM_RTOL`` = 1e-4 (parameters and state,
relative to the leaf's largest magnitude, since elementwise relative error means nothing
near zero) leave one to two orders of magnitude for other backends' reduction orders and
are far below what a wrong update does:
``test_the_tolerances_detect_a_wrong_hyperparameter`` checks that a dropped weight decay,
beta_1 = 0.91 for 0.9 or decay_rate = -0.88 for -0.8 exceed both more than ten times. With
``precision="param", backend="mlx"`` the generated optimizers run MLX's own update, so the
bfloat16 runs must be bit-identical.

The trainer's step is compiled; on the CPU, MLX compiles its fused kernels with the C++
compiler on first use and caches them under $TMPDIR/mlx, so the first run of this file on
a machine takes a few minutes and later runs well under a minute.
"""
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import tree_bits
from mlx.utils import tree_flatten
from mlx_lm.models import gpt_oss, llama, qwen3_moe
from mlx_lm.models.switch_layers import SwitchGLU
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import TrainingArgs, default_loss, iterate_batches, train
from mlx_lm.tuner.utils import linear_to_lora_layers

from generated.adafactor import Adafactor
from generated.adam import Adam
from generated.adamw import AdamW

LOSS_RTOL = 1e-5
PARAM_RTOL = 1e-4
STEPS = 10
BATCH = 4
SEQ = 16  # tokens the model sees; each example is SEQ + 1 tokens (inputs and targets)
VOCAB = 64
SEED = 0

COMMON = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
              vocab_size=VOCAB, rope_theta=10000.0, max_position_embeddings=64,
              tie_word_embeddings=False)
ARCHS = {
    "llama": (llama, {}),
    "qwen3_moe": (qwen3_moe, dict(num_experts=4, num_experts_per_tok=2,
                                  moe_intermediate_size=32, decoder_sparse_step=1,
                                  mlp_only_layers=[], norm_topk_prob=True)),
    "gpt_oss": (gpt_oss, dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"])),
}
# name: (generated class, mlx.optimizers class, hyperparameters)
OPTIMIZERS = {
    "adafactor": (Adafactor, optim.Adafactor, {}),  # relative step size, no learning rate
    "adafactor-lr-beta_1-wd": (Adafactor, optim.Adafactor,
                               dict(learning_rate=1e-2, relative_step=False, beta_1=0.9,
                                    weight_decay=0.01)),
    "adam": (Adam, optim.Adam, dict(learning_rate=3e-3, bias_correction=True)),
    "adamw": (AdamW, optim.AdamW, dict(learning_rate=3e-3, weight_decay=0.05)),
}
LORA = dict(rank=4, scale=10.0, dropout=0.0)


def _model(arch: str, mode: str = "full", dtype=mx.float32) -> nn.Module:
    """A tiny ``arch`` model prepared for ``mode``: "full" (everything trains), "partial"
    (frozen but the last block's attention, the final norm and the head), "lora" (frozen
    base, LoRA adapters in both blocks) or "qlora" (as "lora" on a 4-bit base)."""
    module, extra = ARCHS[arch]
    mx.random.seed(SEED)
    model = module.Model(module.ModelArgs.from_dict({**COMMON, **extra, "model_type": arch}))
    if dtype != mx.float32:
        model.set_dtype(dtype)
        for _, part in model.named_modules():
            if isinstance(part, SwitchGLU):  # the CPU's gather_mm takes float32 only
                part.set_dtype(mx.float32)
    if mode == "partial":
        model.freeze()
        for part in (model.model.layers[-1].self_attn, model.model.norm, model.lm_head):
            part.unfreeze()
    elif mode in ("lora", "qlora"):
        if mode == "qlora":
            nn.quantize(model, group_size=32, bits=4)
        model.freeze()
        linear_to_lora_layers(model, COMMON["num_hidden_layers"], LORA)
    else:
        assert mode == "full", mode
    mx.eval(model.parameters())
    return model


def _twins(arch: str, mode: str = "full", dtype=mx.float32):
    """Two models of the same structure, the second given the first's weights."""
    first, second = _model(arch, mode, dtype), _model(arch, mode, dtype)
    second.load_weights(list(tree_flatten(first.parameters())))
    mx.eval(second.parameters())
    assert tree_bits(first.parameters()) == tree_bits(second.parameters())
    return first, second


def _examples(count: int, seed: int = SEED) -> np.ndarray:
    """``count`` learnable token sequences of SEQ + 1 tokens: arithmetic progressions
    modulo VOCAB with random starts and strides."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, VOCAB, (count, 1))
    strides = rng.integers(1, 5, (count, 1))
    return ((starts + strides * np.arange(SEQ + 1)) % VOCAB).astype(np.int32)


def _batches():
    tokens = _examples(STEPS * BATCH)
    lengths = mx.array([[0, SEQ + 1]] * BATCH)  # (offset, length): every target counts
    return [(mx.array(tokens[i * BATCH:(i + 1) * BATCH]), lengths) for i in range(STEPS)]


def _train_eagerly(model, opt, batches, init_whole_model=False) -> list:
    """mlx-lm's loss; ``opt.update(model, grads)`` after each batch; the losses."""
    if init_whole_model:
        opt.init(model.parameters())
    loss_and_grad = nn.value_and_grad(model, default_loss)
    losses = []
    for batch, lengths in batches:
        (loss, _), grads = loss_and_grad(model, batch, lengths)
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)
        losses.append(loss.item())
    return losses


def _to_numpy(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a, np.float64)


def _leaf_error(a: mx.array, b: mx.array) -> float:
    """max |a - b| over the largest |b| of the leaf (absolute where b is all zero)."""
    x, y = _to_numpy(a), _to_numpy(b)
    if x.size == 0:
        return 0.0
    scale = float(np.max(np.abs(y)))
    return float(np.max(np.abs(x - y))) / (scale if scale > 0 else 1.0)


def _tree_error(ours: dict, theirs: dict, what: str) -> float:
    """The worst leaf error of two flat trees with the same keys; non-float leaves
    (quantized weights, step counts) must be equal."""
    assert ours.keys() == theirs.keys(), what
    worst = 0.0
    for key, value in theirs.items():
        mine = ours[key]
        assert (mine.dtype, mine.shape) == (value.dtype, value.shape), f"{what} {key}"
        if mx.issubdtype(value.dtype, mx.floating):
            worst = max(worst, _leaf_error(mine, value))
        else:
            assert np.array_equal(np.array(mine), np.array(value)), f"{what} {key}"
    return worst


def _loss_error(ours: list, theirs: list) -> float:
    """The largest relative difference of two loss trajectories."""
    return float(np.max(np.abs(np.subtract(ours, theirs)) / np.abs(theirs)))


def _non_arrays(model: nn.Module) -> dict:
    """The module tree's leaves that are not arrays (such as ``layer_types``' strings)."""
    return {k: v for k, v in tree_flatten(model) if not isinstance(v, mx.array)}


def _compare(ours_model, theirs_model, ours_opt, theirs_opt, ours_losses, theirs_losses,
             non_arrays: dict) -> dict:
    """Assert that two runs agree within the tolerances; returns the worst errors."""
    assert len(ours_losses) == len(theirs_losses)
    loss = _loss_error(ours_losses, theirs_losses)
    assert loss <= LOSS_RTOL, (ours_losses, theirs_losses)
    params = _tree_error(dict(tree_flatten(ours_model.parameters())),
                         dict(tree_flatten(theirs_model.parameters())), "parameters")
    assert params <= PARAM_RTOL
    # The state of every trained parameter, plus step (and learning_rate where kept);
    # whatever an explicit init kept for frozen parameters is the optimizer's business.
    trained = {k for k, _ in tree_flatten(theirs_model.trainable_parameters())}
    ours_state = dict(tree_flatten(ours_opt.state))
    theirs_state = {k: v for k, v in tree_flatten(theirs_opt.state)
                    if k.rpartition(".")[0] in trained | {""}}
    assert theirs_state.keys() <= ours_state.keys(), theirs_state.keys() - ours_state.keys()
    state = _tree_error({k: ours_state[k] for k in theirs_state}, theirs_state, "state")
    assert state <= PARAM_RTOL
    # Non-array attributes come through the updates as they were.
    assert _non_arrays(ours_model) == _non_arrays(theirs_model) == non_arrays
    # The runs trained (agreement is not vacuous): the loss moved by much more than LOSS_RTOL.
    assert abs(theirs_losses[-1] - theirs_losses[0]) > 100 * LOSS_RTOL * theirs_losses[0]
    return dict(loss=loss, params=params, state=state)


def _eager_pair(arch, mode, name, dtype=mx.float32, init_whole_model=False, **extra):
    ours_cls, theirs_cls, hyper = OPTIMIZERS[name]
    ours_model, theirs_model = _twins(arch, mode, dtype)
    non_arrays = _non_arrays(ours_model)
    ours_opt, theirs_opt = ours_cls(**hyper, **extra), theirs_cls(**hyper)
    batches = _batches()
    ours_losses = _train_eagerly(ours_model, ours_opt, batches, init_whole_model)
    theirs_losses = _train_eagerly(theirs_model, theirs_opt, batches, init_whole_model)
    return (ours_model, theirs_model, ours_opt, theirs_opt, ours_losses, theirs_losses,
            non_arrays)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_full_fine_tuning_matches_mlx(arch, name):
    _compare(*_eager_pair(arch, "full", name))


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_bfloat16_param_precision_is_bit_identical_to_mlx(arch, name):
    """precision="param" keeps state and math in each parameter's dtype, as MLX does."""
    ours_model, theirs_model, ours_opt, theirs_opt, ours_losses, theirs_losses, non_arrays = (
        _eager_pair(arch, "full", name, mx.bfloat16, precision="param", backend="mlx"))
    assert ours_losses == theirs_losses
    assert tree_bits(ours_model.parameters()) == tree_bits(theirs_model.parameters())
    assert tree_bits(ours_opt.state) == tree_bits(theirs_opt.state)
    dtypes = {k: v.dtype for k, v in tree_flatten(ours_model.parameters())}
    assert dtypes == {k: v.dtype for k, v in tree_flatten(_model(arch, "full", mx.bfloat16)
                                                           .parameters())}
    assert mx.bfloat16 in dtypes.values()
    assert _non_arrays(ours_model) == non_arrays


@pytest.mark.parametrize("mode", ["partial", "lora"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_partial_and_lora_training_match_mlx(arch, name, mode):
    """Only some parameters train: the gradient tree is a part of the model's."""
    run = _eager_pair(arch, mode, name)
    ours_model = run[0]
    trained = dict(tree_flatten(ours_model.trainable_parameters()))
    assert trained and len(trained) < len(tree_flatten(ours_model.parameters()))
    if mode == "lora":
        assert all(".lora_" in k for k in trained)
    _compare(*run)


@pytest.mark.parametrize("init", ["lazy", "whole-model"])
@pytest.mark.parametrize("name", ["adafactor", "adafactor-lr-beta_1-wd", "adamw"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_qlora_on_a_quantized_frozen_base_matches_mlx(arch, name, init):
    """The adapters train on a frozen 4-bit base. With init="whole-model",
    ``opt.init(model.parameters())`` first meets the base's packed uint32 weights, which
    MLX's optimizers accept."""
    run = _eager_pair(arch, "qlora", name, init_whole_model=init == "whole-model")
    packed = [v for _, v in tree_flatten(run[0].parameters()) if v.dtype == mx.uint32]
    assert packed  # the base really is quantized (and frozen: _compare checks it is kept)
    _compare(*run)


class _Losses(TrainingCallback):
    def __init__(self):
        self.losses = []

    def on_train_loss_report(self, train_info: dict):
        self.losses.append(train_info["train_loss"])


def _train_with_mlx_lm(model, opt, tmp_path, accumulate: int) -> list:
    """mlx_lm.tuner.trainer.train on 16 examples, reporting the loss of every step."""
    dataset = [(list(map(int, row)), 0) for row in _examples(4 * BATCH, seed=SEED + 1)]
    args = TrainingArgs(batch_size=BATCH, iters=STEPS, steps_per_report=1,
                        steps_per_eval=10 ** 9, steps_per_save=10 ** 9,
                        max_seq_length=SEQ + 1, grad_accumulation_steps=accumulate,
                        adapter_file=str(tmp_path / "adapters.safetensors"))
    callback = _Losses()
    train(model, opt, dataset, args=args, training_callback=callback,
          iterate_batches=partial(iterate_batches, seed=SEED))
    return callback.losses


# (architecture, mode, optimizer, gradient accumulation steps). The trainer reports
# optimizer.learning_rate, so the relative-step Adafactor is given one it does not use.
TRAINER_CASES = [
    ("llama", "full", "adamw", 1),
    ("qwen3_moe", "lora", "adafactor", 1),
    ("qwen3_moe", "qlora", "adam", 2),
]


@pytest.mark.parametrize("arch,mode,name,accumulate", TRAINER_CASES,
                         ids=["-".join(map(str, case)) for case in TRAINER_CASES])
def test_mlx_lm_trainer_matches_mlx(arch, mode, name, accumulate, tmp_path):
    """mlx-lm's compiled step: the optimizer is initialised and updated while traced."""
    ours_cls, theirs_cls, hyper = OPTIMIZERS[name]
    if "learning_rate" not in hyper:
        hyper = dict(hyper, learning_rate=1e-3)
    ours_model, theirs_model = _twins(arch, mode)
    non_arrays = _non_arrays(ours_model)
    ours_opt, theirs_opt = ours_cls(**hyper), theirs_cls(**hyper)
    ours_losses = _train_with_mlx_lm(ours_model, ours_opt, tmp_path, accumulate)
    theirs_losses = _train_with_mlx_lm(theirs_model, theirs_opt, tmp_path, accumulate)
    assert len(theirs_losses) == STEPS
    assert int(theirs_opt.state["step"]) == int(ours_opt.state["step"]) == STEPS // accumulate
    _compare(ours_model, theirs_model, ours_opt, theirs_opt, ours_losses, theirs_losses,
             non_arrays)


@pytest.mark.parametrize("name,changed", [
    ("adamw", dict(weight_decay=0.0)),
    ("adafactor-lr-beta_1-wd", dict(weight_decay=0.0)),
    ("adafactor-lr-beta_1-wd", dict(beta_1=0.91)),
    ("adafactor", dict(decay_rate=-0.88)),
], ids=["adamw-no-weight_decay", "adafactor-no-weight_decay", "adafactor-beta_1",
        "adafactor-decay_rate"])
def test_the_tolerances_detect_a_wrong_hyperparameter(name, changed):
    """MLX against MLX with one hyperparameter wrong: losses and parameters differ by more
    than ten times the tolerances, so these would catch such a mistake in an update."""
    _, theirs_cls, hyper = OPTIMIZERS[name]
    first, second = _twins("qwen3_moe")
    batches = _batches()
    first_losses = _train_eagerly(first, theirs_cls(**hyper), batches)
    second_losses = _train_eagerly(second, theirs_cls(**{**hyper, **changed}), batches)
    assert _loss_error(second_losses, first_losses) > 10 * LOSS_RTOL
    params = _tree_error(dict(tree_flatten(second.parameters())),
                         dict(tree_flatten(first.parameters())), "parameters")
    assert params > 10 * PARAM_RTOL
