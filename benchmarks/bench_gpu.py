"""Fused generated Adafactor vs MLX's and PyTorch's Adafactor on one GPU, side by side.

For each case (4096x4096, 8192x8192, a ~350M-parameter transformer-shaped tree; float32
and bfloat16) one run measures, on the same device:
  * afgen's generated Adafactor with the fused kernels (backend "cuda" or "metal"),
  * mlx.optimizers.Adafactor, eager and under mx.compile,
  * torch.optim.Adafactor, default and foreach=True (when torch with CUDA is present),
  * a device-to-device copy of the same bytes, the bandwidth reference.
It prints milliseconds per step, speed-ups over MLX, and the fused kernels' achieved
bandwidth (bytes the plan moves / time) as a fraction of the copy's.

    python benchmarks/bench_gpu.py                  # on a CUDA (or Metal) machine
    python benchmarks/bench_gpu.py --smoke          # tiny shapes, any device (CI check)
    python benchmarks/bench_gpu.py --out benchmarks/results/h100.txt
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from generated.adafactor import Adafactor  # noqa: E402


def transformer_tree(d: int = 1024, layers: int = 24, vocab: int = 50304) -> dict:
    """~353M parameters: embeddings plus `layers` blocks of attention and MLP weights."""
    shapes = {"embed": (vocab, d), "final_norm": (d,)}
    for i in range(layers):
        shapes.update({f"l{i}.qkv": (3 * d, d), f"l{i}.out": (d, d), f"l{i}.up": (4 * d, d),
                       f"l{i}.down": (d, 4 * d), f"l{i}.norm1": (d,), f"l{i}.norm2": (d,)})
    return shapes


CASES = {"4096x4096": {"w": (4096, 4096)}, "8192x8192": {"w": (8192, 8192)},
         "transformer-350M": transformer_tree()}
SMOKE_CASES = {"64x96": {"w": (64, 96)}, "tiny-tree": transformer_tree(32, 2, 100)}


def _median_ms(fn, sync, repeats: int, inner: int) -> float:
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(samples)


def _tree(shapes: dict, dtype, seed: int) -> dict:
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    return {k: mx.random.normal(s, key=keys[i]).astype(dtype)
            for i, (k, s) in enumerate(shapes.items())}


def mlx_step_ms(make_opt, shapes, dtype, compiled: bool, repeats: int, inner: int) -> float:
    params, grads = _tree(shapes, dtype, 0), _tree(shapes, dtype, 1)
    opt = make_opt()
    holder = {"p": params}
    opt.init(params)

    def step():
        holder["p"] = opt.apply_gradients(grads, holder["p"])
        return holder["p"]

    if compiled:
        state = [holder, opt.state]
        traced = partial(mx.compile, inputs=state, outputs=state)(step)

        def run():
            mx.eval(traced(), opt.state)
    else:
        def run():
            mx.eval(step(), opt.state)
    return _median_ms(run, mx.synchronize, repeats, inner)


def copy_gbps(nbytes: int, repeats: int, inner: int) -> float:
    src = mx.zeros((nbytes // 4,), dtype=mx.float32)
    mx.eval(src)
    ms = _median_ms(lambda: mx.eval(src + 0),
                    mx.synchronize, repeats, inner)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def torch_step_ms(shapes, dtype_name: str, foreach: bool, repeats: int, inner: int):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or not hasattr(torch.optim, "Adafactor"):
        return None
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(s, device="cuda", generator=gen, dtype=dtype) for s in shapes.values()]
    for p in params:
        p.grad = torch.randn(p.shape, device="cuda", generator=gen, dtype=dtype)
    opt = torch.optim.Adafactor(params, foreach=foreach)
    return _median_ms(opt.step, torch.cuda.synchronize, repeats, inner)


def plan_bytes_per_element(dtype_name: str) -> int:
    """Bytes per element the fused plan moves for a factored parameter, default options."""
    from afgen.build import compile_path
    from afgen.report.traffic import plan_traffic

    compiled = compile_path(ROOT / "specs" / "adafactor.yaml")
    plan = next(p for p in compiled.plans if p.factored and not p.config.get("has_beta_1")
                and p.config.get("scale_parameter"))
    size = 2 if dtype_name == "bfloat16" else 4
    return sum(p.bytes_read + p.bytes_written for p in plan_traffic(plan, size, 4))


def environment() -> str:
    gpu = "none"
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20).stdout.strip() or gpu
    except (OSError, subprocess.SubprocessError):
        pass
    torch_version = "absent"
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        pass
    return (f"GPU: {gpu} | MLX {mx.__version__} ({mx.default_device()}) | torch {torch_version}"
            f" | Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    if args.smoke:
        cases, backend, args.repeats, args.inner = SMOKE_CASES, "mlx", 1, 1
    else:
        backend = "cuda" if hasattr(mx, "cuda") and mx.cuda.is_available() else (
            "metal" if mx.metal.is_available() else None)
        if backend is None:
            sys.exit("no GPU backend in this MLX build; use --smoke for a CPU check")
        cases = CASES
    lines = [environment(), f"fused backend: {backend}; median of {args.repeats} x "
             f"{args.inner} steps; speed-ups are MLX eager time / other time", ""]
    head = (f"{'case':<18} {'dtype':<9} {'afgen':>8} {'mlx':>8} {'mlx-cmp':>8} {'torch':>8} "
            f"{'torch-fe':>8} {'x mlx':>6} {'x cmp':>6} {'x torch':>7} {'GB/s':>7} {'copy':>7} "
            f"{'%copy':>6}")
    lines += [head, "-" * len(head)]
    print("\n".join(lines), flush=True)
    for case, shapes in cases.items():
        n = sum(math.prod(s) for s in shapes.values())
        for dtype_name in ("float32", "bfloat16"):
            dtype = getattr(mx, dtype_name)
            ours = mlx_step_ms(partial(Adafactor, backend=backend), shapes, dtype, False,
                               args.repeats, args.inner)
            ref = mlx_step_ms(optim.Adafactor, shapes, dtype, False, args.repeats, args.inner)
            ref_c = mlx_step_ms(optim.Adafactor, shapes, dtype, True, args.repeats, args.inner)
            t_def = torch_step_ms(shapes, dtype_name, False, args.repeats, args.inner)
            t_fe = torch_step_ms(shapes, dtype_name, True, args.repeats, args.inner)
            moved = plan_bytes_per_element(dtype_name) * n
            gbps = moved / (ours * 1e-3) / 1e9
            copy = copy_gbps(max(moved // 2, 4), args.repeats, args.inner)
            best_torch = min([t for t in (t_def, t_fe) if t is not None], default=None)

            def fmt(v):
                return f"{v:>8.2f}" if v is not None else f"{'n/a':>8}"
            row = (f"{case:<18} {dtype_name:<9} {ours:>8.2f} {ref:>8.2f} {ref_c:>8.2f} "
                   f"{fmt(t_def)} {fmt(t_fe)} {ref / ours:>6.2f} {ref_c / ours:>6.2f} "
                   + (f"{best_torch / ours:>7.2f}" if best_torch else f"{'n/a':>7}")
                   + f" {gbps:>7.1f} {copy:>7.1f} {100 * gbps / copy:>5.0f}%")
            lines.append(row)
            print(row, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")



if __name__ == "__main__":
    main()
