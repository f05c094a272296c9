"""Mutation test of kernel verification: does `afgen verify` notice a broken kernel?

Every pass kernel body of one specialisation, the default factored Adafactor with beta_1
(and verification's example weight decay), and the prologue each target puts before it,
run in Metal and in CUDA, is mutated textually by
tests/kernel_mutants.py (operators, relations, integer and float constants, index
expressions, deleted statements), generically from the rendered text, so the test follows
whatever arithmetic the lowering prints. Each mutant goes through what verification runs
for that case: the CPU executor (sanitizers, two schedules, guards, poison) on verify's
kernel shapes, two steps against the float64 oracle.

The sample is bounded and deterministic: at most PER_KIND mutants of each (dialect, kernel,
kind), drawn with a fixed seed, so every kernel and every kind of mutation is represented
(about 200 mutants; a few minutes in CI).

Why an allow-list of equivalent kinds and not a percentage: a threshold would let a real
blind spot of verification hide among the survivors, and it would have to move whenever
the kernels change. Instead every survivor must be an instance of one of the kinds in
EQUIVALENT, each of which is an argument that the mutant computes the same outputs as
the original for every input, so no verification could tell them apart. The argument is
checked on the mutant's text (the loop runs the same iterations, the guard picks threads
that hold the same total, ...), not by matching a remembered list of lines. A survivor
outside those kinds fails the test; the printed table gives the score and every survivor
with its reason.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from kernel_mutants import Mutant, edits, mutants, sample

from afgen.backends.gpu_driver import plan_kernels
from afgen.check.kernel_runner import CpuKernelRunner, cpu_kernels
from afgen.check.verify import KERNEL_SHAPES, verify_class
from afgen.executor import KernelError

PER_KIND = 8
SEED = 0
KINDS = ("operator", "relation", "int", "float", "index", "delete")
PROLOGUE = "prologue"  # mutants of the target's prologue, which every kernel starts with

RELATION = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
            "==": operator.eq, "!=": operator.ne}
FOR = re.compile(r"for \((?:uint|unsigned int) (\w+) = (\d+); \1 (<|<=|>|>=|==|!=) (\d+); "
                 r"\+\+\1\)")
ARRAY = re.compile(r"^(?:afg_shared )?float (\w+)\[(\d+)\];$")
GUARD = re.compile(r"if \((afg_lane|afg_lid) (<|<=|>|>=|==|!=) (\d+)")
FALLBACK = re.compile(r"^(.* = m_ok \? [^:]*: )(\S+);$")


def _iterations(line: str) -> tuple[int, ...] | None:
    """The counter values of a ``for`` header (None: not one, or more than 64)."""
    m = FOR.search(line)
    if m is None:
        return None
    value, test, bound = int(m.group(2)), RELATION[m.group(3)], int(m.group(4))
    out = []
    while test(value, bound):
        out.append(value)
        value += 1
        if len(out) > 64:
            return None
    return tuple(out)


def same_iterations(m: Mutant, body: str) -> bool:
    """``v < K`` and ``v != K`` (or another test) stop a counter that starts below K and
    steps by one at the same place: the loop runs exactly the same iterations."""
    before, after = _iterations(m.before), _iterations(m.after)
    return before is not None and before == after


def larger_array(m: Mutant, body: str) -> bool:
    """A local or threadgroup array declared with more elements than the kernel indexes:
    the extra element is never read or written."""
    a, b = ARRAY.match(m.before), ARRAY.match(m.after)
    return bool(a and b and a.group(1) == b.group(1) and int(b.group(2)) > int(a.group(2)))


def redundant_rewrites(m: Mutant, body: str) -> bool:
    """A wider loop in a kernel that reduces nothing (no partial sums): the extra
    iterations reach rows or columns another threadgroup owns (bounds-checked against
    M and N) and write the same values there from the same inputs."""
    before, after = _iterations(m.before), _iterations(m.after)
    return ("_part[" not in body and before is not None and after is not None
            and set(after) > set(before))


def masked_fallback(m: Mutant, body: str) -> bool:
    """The value a row input takes past the last row (``m_ok ? x_in[...] : 0.0f``): such
    rows skip every element (``if (!m_ok || ...) continue;``) before it is read."""
    a, b = FALLBACK.match(m.before), FALLBACK.match(m.after)
    return bool(a and b and a.group(1) == b.group(1) and "if (!m_ok" in body)


def unread_rounding_key(m: Mutant, body: str) -> bool:
    """The stochastic-rounding key is read only by bfloat16 writes of the parameter
    (afg_store_rounded ignores it for float32, which this test runs; verification runs
    with stochastic_rounding off, and tests/test_precision.py checks the rounding)."""
    return "afg_key =" in m.before


def total_holders(m: Mutant, body: str) -> bool:
    """The guard of a write of a SIMD or threadgroup total still picks a non-empty set
    of threads that all hold the same total, so the same value lands in the same place.
    CUDA's shuffle-down sums leave it in lane 0 (thread 0 for the block) only; Metal's
    simd_sum leaves it in every lane of the SIMD group (afg_block_sum: SIMD group 0)."""
    a, b = GUARD.search(m.before), GUARD.search(m.after)
    if not (a and b and GUARD.sub("", m.before) == GUARD.sub("", m.after)):
        return False
    who, test, value = b.group(1), RELATION[b.group(2)], int(b.group(3))
    picked = {t for t in range(32 if who == "afg_lane" else 256) if test(t, value)}
    holders = set(range(32)) if m.dialect == "metal" else {0}
    return bool(picked) and picked <= holders


@dataclass(frozen=True)
class Equivalence:
    name: str
    applies: Callable[[Mutant, str], bool]


EQUIVALENT = (
    Equivalence("same loop iterations", same_iterations),
    Equivalence("larger array, extra element unused", larger_array),
    Equivalence("redundant rewrites of equal values", redundant_rewrites),
    Equivalence("masked fallback of a skipped row", masked_fallback),
    Equivalence("rounding key unread in float32", unread_rounding_key),
    Equivalence("another thread holding the same total", total_holders),
)


def _plan(compiled):
    for plan in compiled.plans:
        c = plan.config
        if c.factored and c.get("has_beta_1") and c.get("scale_parameter"):
            return plan
    raise AssertionError("no default factored plan with beta_1")


def _run(compiled, module, plan, mutant: Mutant) -> str:
    """How verification treats the mutant: 'survived', or what caught it."""
    kernels, prologues = module._KERNELS, module._PROLOGUES
    if mutant.kernel == PROLOGUE:
        module._PROLOGUES = {**prologues, mutant.dialect: mutant.source}
    else:
        ins, outs, params, _ = kernels[mutant.kernel]
        module._KERNELS = {**kernels, mutant.kernel: (ins, outs, params, mutant.source)}
    try:
        with cpu_kernels(module, CpuKernelRunner()):
            result = verify_class(compiled, module.Adafactor, plan, mutant.dialect, "float32",
                                  KERNEL_SHAPES[True], 2, seed=0)
        return "survived" if result.passed else "wrong values"
    except KernelError as exc:
        return type(exc).__name__
    finally:
        module._KERNELS, module._PROLOGUES = kernels, prologues


def _reason(mutant: Mutant, body: str) -> str | None:
    return next((e.name for e in EQUIVALENT if e.applies(mutant, body)), None)


def test_mutant_generator_is_generic():
    """Template brackets, comments and declarations are left alone; every kind is found."""
    body = ("// a < b\nconst uint i = g * 4 + l;\nfloat acc[8];\n"
            "for (uint c = 0; c < 8; ++c) {\n  acc[c] = 0.0f;\n}\n"
            "out[i] = afg_store<T>(acc[i % 8] - x[i]);\n")
    found = edits(body)
    assert {k for k, *_ in found} == set(KINDS)
    assert all(body[start:end] != "<" or body[start - 9:start] != "afg_store" for
               _, start, end, _ in found)
    assert not any(start < body.index("\n") for _, start, _, _ in found)  # the comment
    deleted = {body[s:e] for k, s, e, _ in found if k == "delete"}
    assert deleted == {"acc[c] = 0.0f;", "out[i] = afg_store<T>(acc[i % 8] - x[i]);"}
    assert len(mutants("k", "cuda", body)) == len(found)


@pytest.mark.parametrize("dialect", ["metal", "cuda"])
def test_every_non_equivalent_mutant_is_caught(compiled, module, tmp_path, monkeypatch,
                                               dialect):
    monkeypatch.setenv("AFGEN_EXECUTOR_CACHE", str(tmp_path))  # ~100 throw-away binaries
    plan = _plan(compiled)
    names = [k.name for k in plan_kernels(plan, f"afgen_{compiled.spec.stem}")]
    bodies = {n: module._KERNELS[n][3] for n in names}
    bodies[PROLOGUE] = module._PROLOGUES[dialect]
    population = [m for n in bodies for m in mutants(n, dialect, bodies[n])]
    picked = sample(population, PER_KIND, SEED)
    assert {m.kind for m in picked} == set(KINDS)
    assert len(picked) <= PER_KIND * len(KINDS) * len(bodies)
    survivors, unexplained = [], []
    for mutant in picked:
        if _run(compiled, module, plan, mutant) != "survived":
            continue
        reason = _reason(mutant, bodies[mutant.kernel])
        survivors.append((mutant, reason))
        if reason is None:
            unexplained.append(mutant)
    caught = len(picked) - len(survivors)
    print(f"\n{dialect}: {caught}/{len(picked)} mutants caught ({len(population)} generated); "
          f"{len(survivors)} survived:")
    for mutant, reason in survivors:
        print(f"  {mutant.kernel}:{mutant.line} [{mutant.kind}] {mutant.before!r} -> "
              f"{mutant.after!r}: {reason or 'NOT EQUIVALENT'}")
    assert not unexplained, "mutants verification did not catch:\n" + "\n".join(
        f"{m.kernel}:{m.line} {m.before!r} -> {m.after!r}" for m in unexplained)
