"""The benchmark scripts run (tiny shapes) so they stay ready for a GPU machine."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_smoke_mode_runs():
    result = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--smoke"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "64x96" in result.stdout and "tiny-tree" in result.stdout
    assert "%copy" in result.stdout


def test_cpu_benchmark_runs():
    result = subprocess.run([sys.executable, "benchmarks/bench_cpu.py", "--steps", "1",
                             "--repeats", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("x\n") >= 4  # four speed-up ratios
