"""Command line: ``afgen build | verify | show | new | cuda-headers``. Spec errors exit 2
with file:line:col."""
from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from pathlib import Path

from afgen.errors import SpecError, one_line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="afgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="generate generated/<stem>.py and verify it")
    build.add_argument("spec")
    build.add_argument("--out", default="generated", help="output directory")
    build.add_argument("--steps", type=_steps, default=25)
    build.add_argument("--no-verify", action="store_true")
    build.add_argument("--backend", action="append",
                       help="verify only these backend(s): mlx, metal, cuda (default: all)")
    build.add_argument("--no-adversarial", action="store_true",
                       help="skip the adversarial gradient families (zeros, 1e-40, 1e30, ...)")
    verify = sub.add_parser("verify", help="compare every backend with the float64 oracle")
    verify.add_argument("spec")
    verify.add_argument("--steps", type=_steps, default=25)
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--backend", action="append", help="backend(s) to verify")
    verify.add_argument("--no-adversarial", action="store_true",
                        help="skip the adversarial gradient families (zeros, 1e-40, 1e30, ...)")
    show = sub.add_parser("show", help="print the lowered plan")
    show.add_argument("spec")
    new = sub.add_parser("new", help="start a variant spec from an existing one")
    new.add_argument("name", help="class name of the variant, e.g. MyAdafactor")
    new.add_argument("--from", dest="source", required=True, help="spec to copy")
    new.add_argument("--out", help="output file (default: <snake_case name>.yaml)")
    sub.add_parser("cuda-headers", help="fetch MLX's CUDA device headers (for NVRTC checks) "
                   "from MLX's CUDA wheel into the cache")
    return parser


def _verify(compiled, steps: int, seed: int = 0, backends: list[str] | None = None,
            adversarial: bool = True) -> int:
    from afgen.check.verify import verify

    report = verify(compiled, steps=steps, seed=seed, backends=backends,
                    adversarial=adversarial)
    print(report.table())
    return 0 if report.passed else 1


def _steps(text: str) -> int:
    """``--steps``: at least one, or verification compares nothing and passes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader went away (``afgen show spec | head``): stop quietly with the status
        # of a Unix tool killed by SIGPIPE, and keep Python's exit-time flush silent.
        _discard_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing is left to flush at exit


def _run(args: argparse.Namespace) -> int:
    from afgen.build import compile_path, write_module

    try:
        if args.command == "cuda-headers":
            from afgen.executor.mlx_cuda_headers import main as fetch_headers

            return fetch_headers()
        if args.command == "new":
            from afgen.new import new_variant

            print(f"wrote {new_variant(args.name, args.source, args.out)}")
            return 0
        compiled = compile_path(args.spec)
        if args.command == "show":
            from afgen.report.show import show

            print(show(compiled))
            return 0
        if args.command == "build":
            target = write_module(compiled, Path(args.out))
            print(f"wrote {target}")
            return 0 if args.no_verify else _verify(compiled, args.steps, 0, args.backend,
                                                    not args.no_adversarial)
        return _verify(compiled, args.steps, args.seed, args.backend, not args.no_adversarial)
    except SpecError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except (ValueError, OSError) as exc:  # bad arguments, an unwritable output path
        print(one_line(f"afgen: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
