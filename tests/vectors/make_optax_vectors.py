"""Write tests/vectors/optax_adafactor.npz: inputs and outputs of optax.adafactor itself.

specs/adafactor_optax.yaml is tested against these vectors (tests/test_parity_optax.py),
so CI needs no JAX. Regenerate with

    python tests/vectors/make_optax_vectors.py

If optax is not importable, the script makes a virtual environment (default
~/.cache/afgen/optax-venv, or --venv), installs the pinned JAX/optax below into it (about
620 MB) and re-runs itself there. The file records the versions that produced it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

PINNED = ["jax==0.10.2", "jaxlib==0.10.2", "optax==0.2.8", "numpy"]
OUT = Path(__file__).with_name("optax_adafactor.npz")

# Each case: optax.adafactor keyword arguments (schedules as {"exponential": [init, rate]},
# i.e. init * rate ** count), parameter shapes, steps, and the step count to start from
# (decay_offset is meant for resuming, so one case starts at a restored count).
CASES = {
    "defaults": {
        "hyper": {},
        "shapes": {"scalar": [], "vector": [7], "small": [3, 5], "tall": [130, 128],
                   "thin": [40, 128]},
        "steps": 3, "start_count": 0,
    },
    "momentum_weight_decay": {
        "hyper": {"learning_rate": 0.01, "min_dim_size_to_factor": 4, "momentum": 0.9,
                  "weight_decay_rate": 1e-3},
        "shapes": {"batch_middle": [6, 5, 9], "tall": [9, 6], "below_min": [2, 3],
                   "tie": [4, 4], "rows_after_cols": [3, 8, 4, 5], "vector": [5]},
        "steps": 6, "start_count": 0,
    },
    "schedules_offset": {
        "hyper": {"learning_rate": {"exponential": [0.05, 0.9]}, "min_dim_size_to_factor": 3,
                  "clipping_threshold": None, "multiply_by_parameter_scale": False,
                  "decay_rate": 0.5, "decay_offset": 5},
        "shapes": {"tall": [7, 3], "wide": [3, 7], "vector": [4], "scalar": []},
        "steps": 5, "start_count": 5,
    },
    "unfactored": {
        "hyper": {"factored": False, "eps": 1e-3, "momentum": 0.5, "clipping_threshold": 2.0,
                  "weight_decay_rate": {"exponential": [0.1, 0.5]}},
        "shapes": {"matrix": [6, 9], "vector": [5]},
        "steps": 5, "start_count": 0,
    },
}


def _ensure_optax(venv_dir: Path) -> None:
    """Re-run this script in a venv that has the pinned optax when it is missing here."""
    try:
        import optax  # noqa: F401
        return
    except ImportError:
        pass
    python = venv_dir / "bin" / "python"
    if not python.exists():
        print(f"creating {venv_dir} with {' '.join(PINNED)}", file=sys.stderr)
        venv.create(venv_dir, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINNED], check=True)
    os.execv(str(python), [str(python), __file__, "--venv", str(venv_dir)])


def _schedule(value):
    import optax

    if isinstance(value, dict):
        init, rate = value["exponential"]
        return optax.exponential_decay(init_value=init, transition_steps=1, decay_rate=rate)
    return value


def _run_case(name: str, case: dict, seed: int) -> dict:
    import jax.numpy as jnp
    import numpy as np
    import optax
    from optax._src.factorized import FactoredState
    from optax.transforms._accumulation import EmaState

    rng = np.random.default_rng(seed)
    kwargs = {k: _schedule(v) for k, v in case["hyper"].items()}
    tx = optax.adafactor(**kwargs)
    params = {p: rng.standard_normal(s).astype(np.float32) for p, s in case["shapes"].items()}
    out = {f"{name}/{p}/init": v for p, v in params.items()}
    jparams = {p: jnp.asarray(v) for p, v in params.items()}
    state = tx.init(jparams)
    start = jnp.asarray(case["start_count"], jnp.int32)  # every count in the chain
    state = tuple(s._replace(count=start) if "count" in getattr(s, "_fields", ()) else s
                  for s in state)
    for step in range(case["steps"]):
        grads = {p: rng.standard_normal(s).astype(np.float32)
                 for p, s in case["shapes"].items()}
        out.update({f"{name}/{p}/grad{step}": g for p, g in grads.items()})
        updates, state = tx.update({p: jnp.asarray(g) for p, g in grads.items()}, state,
                                   jparams)
        jparams = optax.apply_updates(jparams, updates)
    out.update({f"{name}/{p}/final": np.asarray(v) for p, v in jparams.items()})
    for sub in state:
        if isinstance(sub, FactoredState):
            for key in ("v_row", "v_col", "v"):
                for p, value in getattr(sub, key).items():
                    out[f"{name}/{p}/state/{key}"] = np.asarray(value)
        elif isinstance(sub, EmaState):
            for p, value in sub.ema.items():
                out[f"{name}/{p}/state/ema"] = np.asarray(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path,
                        default=Path.home() / ".cache" / "afgen" / "optax-venv")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    _ensure_optax(args.venv)
    import jax
    import numpy as np
    import optax

    arrays: dict = {}
    for index, (name, case) in enumerate(CASES.items()):
        arrays.update(_run_case(name, case, seed=index))
    meta = {"cases": CASES, "versions": {"jax": jax.__version__, "optax": optax.__version__}}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, optax {optax.__version__})")


if __name__ == "__main__":
    main()
