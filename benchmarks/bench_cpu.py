"""Generated optimizers (MLX-ops backend) vs mlx.optimizers, side by side.

Every variant updates the same parameter tree from the same gradients; each timing is
the median of several repetitions of ``steps`` optimizer steps, the variants of a row
taken in turns in one run (so a change of machine load falls on all alike), and the
table prints ratios (time of ours / time of MLX's: below 1 is faster). Rows: Adafactor
with its defaults and with ``beta_1``/``weight_decay``, Adam and AdamW, eager and under
``mx.compile``; the first call (state set-up, and tracing and compiling) is printed too.

    python benchmarks/bench_cpu.py [--steps 10] [--repeats 5] [--tree small|medium|llama]
        [--baseline path/to/generated/adafactor.py] [--sweep] [--plot PATH.png] [--smoke]

``--tree llama`` is a four-layer Llama-layout tree of 25M parameters (39 tensors of at
most 1.3M elements); ``medium`` (18M) has matrices of up to 8M elements, larger than
MLX's CPU buffer cache. ``--baseline`` times another build of the same spec beside them
(the ``generated/`` directory of an earlier checkout, say
``git worktree add /tmp/old <rev>``), so a change to code generation is measured against
what it replaces in the same run.

``--sweep`` then times both, eager and compiled, on transformer-shaped trees from about
1M to 25M parameters, beside the bandwidth bound measured in the same run: the time to
move 6 float32 words per parameter (read the gradient and the parameter, write the
parameter, and the factored passes' re-reads) at the speed of a large copy. It also
counts the kernel dispatches per step of the fused path and of MLX's Adafactor against
the tensor count (benchmarks/bench_dispatch.py). ``--plot PATH.png`` draws both (needs
the ``plot`` extra, matplotlib, imported only then); ``--smoke`` shrinks the sweep to
tiny trees.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_dispatch import CONTENDERS, Tree, count, llama_tree  # noqa: E402

from generated.adafactor import Adafactor  # noqa: E402
from generated.adam import Adam  # noqa: E402
from generated.adamw import AdamW  # noqa: E402

WORDS_PER_ELEMENT = 6
"""float32 words a bandwidth-bound Adafactor step moves per parameter (the fused plan's
reads and writes of full-size arrays); the sweep's bound is that many bytes over the
measured copy bandwidth."""

TREES = {
    "small": {"w1": (512, 512), "w2": (512, 2048), "b": (2048,), "emb": (1000, 256)},
    "medium": {"w1": (2048, 2048), "w2": (2048, 4096), "b": (4096,), "emb": (8000, 512),
               "heads": (4, 512, 512)},
    "llama": llama_tree(4, 704, 8 * 704 // 3, 1024),
}


def make_tree(shapes: dict, dtype=mx.float32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: mx.array(rng.standard_normal(s).astype(np.float32)).astype(dtype)
            for k, s in shapes.items()}


def load_generated(path: Path) -> object:
    """A generated module from a file: as part of its directory's package when the
    runtime it imports lies beside it, else on its own (older builds were self-contained)."""
    path = path.resolve()
    if (path.parent / "afgen_runtime.py").exists():
        # A package of its own name, so it never shadows this checkout's ``generated``.
        package = f"baseline_{abs(hash(str(path.parent)))}"
        spec = importlib.util.spec_from_file_location(
            package, path.parent / "__init__.py", submodule_search_locations=[str(path.parent)])
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
        return importlib.import_module(f"{package}.{path.stem}")
    spec = importlib.util.spec_from_file_location(f"baseline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_steps(make_opt, params, grads, compiled: bool):
    """A function that runs ``steps`` optimizer steps (warmed up and, when compiled,
    traced already) and returns the seconds per step; its ``first_call`` is the seconds
    the warm-up step took (state initialisation, and tracing and compiling when
    compiled: what a training loop pays once)."""
    opt = make_opt()
    state = {"params": dict(params)}
    opt.init(state["params"])

    def step(g):
        state["params"] = opt.apply_gradients(g, state["params"])
        return state["params"]

    if compiled:
        tracked = [state, opt.state]
        step = partial(mx.compile, inputs=tracked, outputs=tracked)(step)
    start = time.perf_counter()
    mx.eval(step(grads), opt.state)  # warm up (and trace)
    first_call = time.perf_counter() - start

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            mx.eval(step(grads), opt.state)
        return (time.perf_counter() - start) / steps

    run.first_call = first_call
    return run


def time_interleaved(runs: dict, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each prepared run, the repetitions taken in turns so a
    change of machine load falls on every variant alike."""
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            samples[label].append(run(steps))
    return {label: statistics.median(times) for label, times in samples.items()}


def copy_bandwidth(nbytes: int = 1 << 26, repeats: int = 5) -> tuple[float, float]:
    """Bytes per second (read + written) of copying a buffer of ``nbytes``, by NumPy (a
    memcpy) and by an MLX elementwise copy: the faster one is what a step could reach."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    a = mx.array(src)
    mx.eval(a)
    numpy_times, mlx_times = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        start = time.perf_counter()
        np.copyto(dst, src)
        numpy_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        mx.eval(mx.abs(a))
        mlx_times.append(time.perf_counter() - start)
    return 2 * nbytes / min(numpy_times), 2 * nbytes / min(mlx_times)


def sweep_trees(smoke: bool) -> list[dict]:
    """Four-layer Llama-layout trees (39 tensors) of about 1, 4, 12 and 25M parameters."""
    if smoke:
        return [llama_tree(1, d, 2 * d, 64) for d in (16, 32)]
    return [llama_tree(4, d, 8 * d // 3, 1024) for d in (128, 256, 448, 704)]


@dataclass
class SweepPoint:
    """One tree of the sweep: its size and the median step time of each variant."""

    parameters: int
    ms: dict[str, float]
    bound_ms: float


@dataclass
class DispatchPoint:
    """Dispatches per step of each optimizer on a Llama-layout tree of ``tensors``."""

    tensors: int
    dispatches: dict[str, int]


SWEEP_VARIANTS = [(f"{who} {mode}", make, mode == "compiled")
                  for who, make in (("afgen", partial(Adafactor, backend="mlx")),
                                    ("mlx", optim.Adafactor))
                  for mode in ("eager", "compiled")]
DISPATCH_CONTENDERS = {"afgen Adafactor (fused)": "afgen fused",
                       "  stacking every size": "afgen fused, all stacked",
                       "mlx.optimizers.Adafactor": "mlx"}
"""The optimizers whose dispatches the sweep counts (bench_dispatch's labels) and their
short names in the table and the plot."""


def run_sweep(steps: int, repeats: int, smoke: bool) -> tuple[list[SweepPoint],
                                                                list[DispatchPoint], float]:
    by_numpy, by_mlx = copy_bandwidth(1 << 20 if smoke else 1 << 26)
    bandwidth = max(by_numpy, by_mlx)
    print(f"\ncopy bandwidth: NumPy {by_numpy / 1e9:.1f} GB/s, MLX {by_mlx / 1e9:.1f} GB/s; "
          f"bound = {WORDS_PER_ELEMENT} x 4 B per parameter at {bandwidth / 1e9:.1f} GB/s")
    print(f"{'params':>8} " + " ".join(f"{label + ' ms':>18}" for label, *_ in SWEEP_VARIANTS)
          + f" {'bound ms':>9}")
    points = []
    for shapes in sweep_trees(smoke):
        params, grads = make_tree(shapes), make_tree(shapes, seed=1)
        n = sum(v.size for v in params.values())
        runs = {label: prepare_steps(make, params, grads, compiled)
                for label, make, compiled in SWEEP_VARIANTS}
        ms = {label: t * 1e3 for label, t in time_interleaved(runs, steps, repeats).items()}
        point = SweepPoint(n, ms, WORDS_PER_ELEMENT * 4 * n / bandwidth * 1e3)
        points.append(point)
        print(f"{n / 1e6:>7.2f}M " + " ".join(f"{v:>18.2f}" for v in ms.values())
              + f" {point.bound_ms:>9.2f}")

    contenders = [c for c in CONTENDERS if c.label in DISPATCH_CONTENDERS]
    modes = ("eager", "compiled")
    labels = [f"{DISPATCH_CONTENDERS[c.label]} {m}" for c in contenders for m in modes]
    width = max(map(len, labels))
    print(f"\ndispatches per step\n{'tensors':>8} " + " ".join(f"{x:>{width}}" for x in labels))
    dispatch_points = []
    for layers in ((1, 2) if smoke else (1, 2, 4, 8, 16, 32)):
        shapes = llama_tree(layers)
        tree = Tree(partial(llama_tree, layers), partial(llama_tree, layers, 4096, 11008, 32000))
        counts = {f"{DISPATCH_CONTENDERS[c.label]} {m}": count(c, tree, m == "compiled").total
                  for c in contenders for m in modes}
        dispatch_points.append(DispatchPoint(len(shapes), counts))
        print(f"{len(shapes):>8} " + " ".join(f"{v:>{width}}" for v in counts.values()))
    return points, dispatch_points, bandwidth


def commit() -> str:
    """The checkout's short commit (with ``+`` when it has changes), for the plot title."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return rev + ("+" if dirty else "")


def plot(path: Path, points: list[SweepPoint], dispatch_points: list[DispatchPoint],
         bandwidth: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [p.parameters / 1e6 for p in points]
    styles = {"afgen": "tab:blue", "mlx": "tab:orange"}
    for label, *_ in SWEEP_VARIANTS:
        who, mode = label.split()
        left.plot(sizes, [p.ms[label] for p in points], marker="o", color=styles[who],
                  linestyle="-" if mode == "eager" else "--",
                  label=f"{'afgen (mlx backend)' if who == 'afgen' else 'mlx.optimizers'} "
                        f"{mode}")
    left.plot(sizes, [p.bound_ms for p in points], color="black", linestyle=":",
              label=f"bandwidth bound ({WORDS_PER_ELEMENT} words/param at "
                    f"{bandwidth / 1e9:.0f} GB/s)")
    left.set(xscale="log", yscale="log", xlabel="parameters (millions)",
             ylabel="ms per step", title=f"Adafactor step time (39 tensors), MLX "
                                          f"{mx.__version__} on {mx.default_device()}")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)

    tensors = [p.tensors for p in dispatch_points]
    legends = {"afgen fused": ("tab:blue", "afgen (fused kernels)"),
               "afgen fused, all stacked": ("tab:green", "afgen (fused, every size stacked)"),
               "mlx": ("tab:orange", "mlx.optimizers")}
    for label in dispatch_points[0].dispatches:
        who, mode = label.rsplit(" ", 1)
        color, name = legends[who]
        right.plot(tensors, [p.dispatches[label] for p in dispatch_points], marker="o",
                   color=color, linestyle="-" if mode == "eager" else "--",
                   label=f"{name} {mode}")
    right.set(xscale="log", yscale="log", xlabel="tensors in the tree (Llama layout)",
              ylabel="kernel dispatches per step", title="Dispatches per Adafactor step")
    right.set_xticks(tensors, [str(t) for t in tensors], minor=False)
    right.xaxis.set_minor_locator(NullLocator())
    right.legend(fontsize=8)
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.text(0.99, 0.01, f"afgen {commit()}", fontsize=7, ha="right", color="gray")
    fig.savefig(path, dpi=80)
    print(f"\nwrote {path}")


def table_rows(baseline: type | None) -> list[tuple[str, dict]]:
    """(label, {variant: optimizer factory}) per row of the main table."""
    rows = []
    for label, kw in [("Adafactor defaults", {}),
                      ("Adafactor beta_1=0.9, wd=0.01", {"beta_1": 0.9, "weight_decay": 0.01})]:
        variants = {"mlx": partial(optim.Adafactor, **kw),
                    "afgen": partial(Adafactor, backend="mlx", **kw)}
        if baseline:
            variants["baseline"] = partial(baseline, backend="mlx", **kw)
        rows.append((label, variants))
    rows.append(("Adam lr=1e-3", {"mlx": partial(optim.Adam, 1e-3),
                                  "afgen": partial(Adam, 1e-3, backend="mlx")}))
    rows.append(("AdamW lr=1e-3", {"mlx": partial(optim.AdamW, 1e-3),
                                   "afgen": partial(AdamW, 1e-3, backend="mlx")}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", choices=sorted(TREES), default="small")
    parser.add_argument("--baseline", type=Path,
                        help="another build's generated/adafactor.py")
    parser.add_argument("--sweep", action="store_true",
                        help="time 1M-25M parameter trees beside the bandwidth bound, and "
                             "count dispatches against the tensor count")
    parser.add_argument("--plot", type=Path, metavar="PATH.png",
                        help="draw the sweep (implies --sweep; needs matplotlib)")
    parser.add_argument("--smoke", action="store_true", help="a sweep of tiny trees")
    args = parser.parse_args()
    baseline = load_generated(args.baseline).Adafactor if args.baseline else None
    params = make_tree(TREES[args.tree])
    grads = make_tree(TREES[args.tree], seed=1)
    n = sum(v.size for v in params.values())
    print(f"MLX {mx.__version__} on {mx.default_device()}, tree '{args.tree}' ({n / 1e6:.1f}M "
          f"params, {len(params)} tensors), median of {args.repeats} x {args.steps} steps, "
          "variants in turns")
    extra = f" {'baseline ms':>12} {'baseline/afgen':>15}" if baseline else ""
    print(f"{'optimizer':<30} {'variant':<9} {'first call ms (mlx / afgen)':>28} "
          f"{'mlx ms':>8} {'afgen ms':>9} {'afgen/mlx':>10}" + extra)
    for label, variants in table_rows(baseline):
        for compiled in (False, True):
            runs = {who: prepare_steps(make, params, grads, compiled)
                    for who, make in variants.items()}
            ms = {who: t * 1e3 for who, t in time_interleaved(runs, args.steps,
                                                               args.repeats).items()}
            first = f"{runs['mlx'].first_call * 1e3:.1f} / {runs['afgen'].first_call * 1e3:.1f}"
            extra = (f" {ms['baseline']:>12.2f} {ms['baseline'] / ms['afgen']:>14.2f}x"
                     if "baseline" in ms else "")
            print(f"{label:<30} {'compiled' if compiled else 'eager':<9} {first:>28} "
                  f"{ms['mlx']:>8.2f} {ms['afgen']:>9.2f} {ms['afgen'] / ms['mlx']:>9.2f}x"
                  + extra)
    if args.sweep or args.plot:
        points, dispatch_points, bandwidth = run_sweep(args.steps, args.repeats, args.smoke)
        if args.plot:
            plot(args.plot, points, dispatch_points, bandwidth)


if __name__ == "__main__":
    main()
