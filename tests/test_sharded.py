"""Sharded training over mx.distributed, in real multi-process jobs (``mlx.launch
--backend ring`` on loopback): each process updates its slices of parameters split along
axis 0 or the last axis, and must match the same optimizer on the whole parameters to the
parity tolerance, for every spec, with MLX ops (the statements, and the fused plan's MLX
twins) and with the fused kernels' text on the CPU executor. Without the sharding the
same runs differ (the reductions would be per slice), which shows the check has teeth."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_launch_at_a_time

ROOT = Path(__file__).resolve().parent.parent
# Muon multiplies whole matrices: it refuses a sharded parameter (agreement.py checks).
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml") if p.stem != "muon")
# Specs whose update reduces (so sharding needs collectives); the fused-kernel runs, which
# are slow on the executor, take these.
REDUCING = ["adafactor", "adafactor_optax", "adafactor_paper", "adafactor_torch", "came",
            "lamb", "mars", "sm3"]
TOLERANCE = 2e-5
LAUNCH = str(Path(sys.executable).with_name("mlx.launch"))  # installed with MLX


def _launch(script: str, ranks: int, args: list[str], tmp_path: Path,
            timeout: int = 900) -> list[dict]:
    """Run ``script`` in ``ranks`` processes; every process's JSON lines."""
    out = tmp_path / "result"
    command = [LAUNCH, "--backend", "ring", "-n", str(ranks),
               sys.executable, str(ROOT / "tests" / "distributed" / script), *args,
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with one_launch_at_a_time():
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for rank in range(ranks)
            for line in (tmp_path / f"result.{rank}").read_text().splitlines()]


def _check(results: list[dict], specs: list[str], ranks: int) -> None:
    assert sorted({r["spec"] for r in results}) == sorted(specs)
    assert len(results) == len(specs) * ranks
    for r in results:
        assert r["worst"] <= TOLERANCE, r
        assert r["state_bytes"] <= r["unsharded_state_bytes"], r


@pytest.mark.parametrize("ranks,axis,planned", [
    (2, 0, False), (2, -1, True), (4, -1, False), (4, 0, True)])
def test_sharded_mlx_ops_match_unsharded(ranks, axis, planned, tmp_path):
    """Statements below the plan's size threshold; with ``planned`` the fused plan's MLX
    twins at every size (their partial sums completed in the glue, as on a GPU). Four
    processes share two cores here, so they run Adafactor alone with the plan."""
    specs = SPECS if not planned or ranks == 2 else ["adafactor"]
    args = ["--specs", *specs, "--axis", str(axis), "--steps", "20"]
    results = _launch("sharded_steps.py", ranks, args + (["--planned"] if planned else []),
                      tmp_path)
    _check(results, specs, ranks)
    # Adam's state is all full-size: each process keeps 1/ranks of it.
    for r in results:
        if r["spec"] == "adam":
            assert r["state_bytes"] * ranks == r["unsharded_state_bytes"]


@pytest.mark.parametrize("backend,ranks,axis,specs,steps", [
    ("metal", 2, -1, REDUCING, 3),
    ("cuda", 2, 0, REDUCING, 3),
    ("metal", 4, 0, ["adafactor"], 3),
    ("metal", 2, -1, ["adafactor"], 20),
])
def test_sharded_fused_kernels_match_unsharded(backend, ranks, axis, specs, steps, tmp_path):
    """The kernels' text on the CPU executor: partial sums per threadgroup and row/col
    chunk, completed across processes in the driver."""
    args = ["--specs", *specs, "--axis", str(axis), "--steps", str(steps),
            "--optimizer-backend", backend]
    _check(_launch("sharded_steps.py", ranks, args, tmp_path), specs, ranks)


def test_without_the_sharding_the_slices_step_differently(tmp_path):
    specs = ["adafactor", "came", "lamb"]
    results = _launch("sharded_steps.py", 2, ["--specs", *specs, "--axis", "0",
                                               "--unsharded"], tmp_path)
    assert all(r["worst"] > 1e-3 for r in results), results


@pytest.mark.parametrize("ranks", [2, 4])
def test_data_parallel_matches_one_process_with_the_whole_batch(ranks, tmp_path):
    specs = ["adafactor", "adam", "adamw", "came", "lamb", "sm3"]
    results = _launch("data_parallel.py", ranks, ["--specs", *specs], tmp_path)
    assert len(results) == len(specs) * ranks
    assert all(r["worst"] <= TOLERANCE for r in results), results


def test_readme_example_trains_like_one_process():
    """The README's "Training across machines" command, as written there."""
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"^(mlx\.launch .*train_sharded\.py)$", readme, re.M)
    words = [LAUNCH if w == "mlx.launch" else sys.executable if w == "python" else w
             for w in command.split()]
    with one_launch_at_a_time():
        done = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    difference = float(re.search(r"largest difference from one process: (\S+)",
                                 done.stdout).group(1))
    assert difference <= 1e-6, done.stdout


def test_processes_agree_on_skipping_and_round_each_slice_differently(tmp_path):
    """A NaN in one process's slice skips the step in every process; identical bfloat16
    slices draw different rounding noise; a compiled sharded step equals the eager one;
    Muon refuses a sharded matrix and leaves it as it was."""
    results = _launch("agreement.py", 2, [], tmp_path)
    for r in results:
        assert r == {"skipped": True, "skipped_steps": 1, "slices_differ": True,
                     "compiled_difference": 0.0, "muon_refused": True}, r
