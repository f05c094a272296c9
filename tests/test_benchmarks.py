"""The benchmark scripts run (tiny shapes) so they stay ready for a GPU machine."""
import re
import subprocess
import sys
from pathlib import Path

from helpers import one_launch_at_a_time

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gpu_benchmark_smoke_mode_runs():
    out = _run("benchmarks/bench_gpu.py", "--smoke")
    assert "64x96" in out and "tiny-tree" in out
    assert "%copy" in out


def test_cpu_benchmark_runs_beside_a_baseline_build():
    """Eight rows (Adafactor twice, Adam, AdamW; eager and compiled) with their ratio to
    MLX, and the Adafactor rows beside a baseline build (this checkout's own here)."""
    out = _run("benchmarks/bench_cpu.py", "--steps", "1", "--repeats", "1", "--baseline",
               "generated/adafactor.py")
    rows = re.findall(r"^(Adafactor|Adam|AdamW)\b.*?(eager|compiled)\s.*?([\d.]+)x"
                      r"(?:\s+[\d.]+\s+([\d.]+)x)?$", out, re.M)
    assert [(name, mode) for name, mode, *_ in rows] == [
        (name, mode) for name in ("Adafactor", "Adafactor", "Adam", "AdamW")
        for mode in ("eager", "compiled")]
    assert all(float(ratio) > 0 for *_, ratio, _ in rows)
    assert [bool(baseline) for *_, baseline in rows] == [True] * 4 + [False] * 4


def _dispatch_rows(out: str) -> dict[tuple[str, str], list[int]]:
    """bench_dispatch's table: (optimizer, mode) -> [per step, kernels, glue] (fused)."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S.*?)\s+(eager|compiled)\s+(\d+)\s+[\d.]+\s*(\d+)?\s*(\d+)?$",
                     line)
        if m:
            rows[m[1], m[2]] = [int(v) for v in m.groups()[2:] if v is not None]
    return rows


def test_dispatch_benchmark_smoke_mode_counts():
    out = _run("benchmarks/bench_dispatch.py", "--smoke")
    # Llama layout with 2 layers: 3 + 9 * 2 tensors; at full size only the 5 norms have
    # at most STACK_MAX_ELEMENTS elements.
    assert "21 tensors, 5 of them small enough to stack at full size" in out
    rows = _dispatch_rows(out)
    assert len(rows) == 16  # eight rows, eager and compiled
    # Unstacked, the fused Adafactor launches 3 kernels per matrix (16: embedding, lm_head
    # and 7 per layer) and 2 per vector (5 norms); as at full size the norms are one
    # stack; with every size stacked there are 4 stacks of matrices (embedding and head,
    # 8 of 64 x 64, 4 of 172 x 64, 2 of 64 x 172). Glue is the rest.
    kernels = {"afgen Adafactor (fused)": 3 * 16 + 2, "stacking every size": 3 * 4 + 2,
               "stacking none": 3 * 16 + 2 * 5}
    for mode in ("eager", "compiled"):
        for label, expected in kernels.items():
            total, launched, glue = rows[label, mode]
            assert launched == expected and total == launched + glue, label
        assert rows["stacking every size", mode][0] < rows["afgen Adafactor (fused)", mode][0]
        assert rows["afgen Adafactor (fused)", mode][0] < rows["stacking none", mode][0]
        # Fused Adam: one kernel per tensor, its scalars computed once per step (the
        # step increment is the one op besides): what MLX's compiled Adam launches.
        assert rows["afgen Adam (fused)", mode] == [22, 21, 1]
    # mlx.optimizers.Adam: 12 ops per tensor and the step increment (see test_mlx_graph);
    # compiled, one fused group per tensor and the increment.
    assert rows["mlx.optimizers.Adam", "eager"] == [12 * 21 + 1]
    assert rows["mlx.optimizers.Adam", "compiled"] == [21 + 1]
    for (name, mode), counts in rows.items():
        if mode == "compiled":
            assert counts[0] <= rows[name, "eager"][0], name


def test_cpu_benchmark_sweep_numbers():
    out = _run("benchmarks/bench_cpu.py", "--steps", "1", "--repeats", "1", "--smoke",
               "--sweep")
    bandwidth = re.search(r"copy bandwidth: NumPy ([\d.]+) GB/s, MLX ([\d.]+) GB/s", out)
    assert bandwidth and float(bandwidth[1]) > 0 and float(bandwidth[2]) > 0
    times = re.findall(r"^\s+([\d.]+)M((?:\s+[\d.]+){5})$", out, re.M)
    assert len(times) == 2  # two tiny trees, four variants and the bound each
    sizes = [float(size) for size, _ in times]
    bounds = [float(cols.split()[-1]) for _, cols in times]
    assert sizes[0] < sizes[1] and bounds[0] <= bounds[1]
    dispatch = {int(m[0]): [int(v) for v in m[1].split()]
                for m in re.findall(r"^\s+(\d+)((?:\s+\d+){6})$", out, re.M)}
    assert sorted(dispatch) == [12, 21]
    # The same counts as bench_dispatch (fused as at full size, every size stacked, mlx;
    # eager and compiled each).
    rows = _dispatch_rows(_run("benchmarks/bench_dispatch.py", "--smoke"))
    assert dispatch[21] == [rows[label, mode][0] for label in (
        "afgen Adafactor (fused)", "stacking every size", "mlx.optimizers.Adafactor")
        for mode in ("eager", "compiled")]


def test_cpu_benchmark_plot(tmp_path):
    png = tmp_path / "sweep.png"
    _run("benchmarks/bench_cpu.py", "--steps", "1", "--repeats", "1", "--smoke", "--plot",
         str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sharded_benchmark_smoke_mode_counts_the_collectives():
    """1 process exchanges nothing; 2 and 4 carry the same O(rows + cols) payload, far
    below the parameters' bytes."""
    with one_launch_at_a_time():
        out = _run("benchmarks/bench_sharded.py", "--smoke")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2, 4]
    carried = [int(r[2]) for r in rows]
    assert carried[0] == 0 and carried[1] == carried[2] > 0
    assert all(int(r[2]) < int(r[3]) for r in rows)
