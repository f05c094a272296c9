"""The pipeline in one place: spec -> specialised programs -> kernel plans."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from afgen.backends.names import check_kernel_names
from afgen.backends.targets import kernel_reductions
from afgen.lower.config import StaticConfig, all_configs
from afgen.lower.plan import KernelPlan, build_plan
from afgen.lower.specialise import distinct_programs
from afgen.spec.model import Spec


@dataclass
class Compiled:
    """A spec lowered for every static configuration it allows."""

    spec: Spec
    plans: list[KernelPlan]

    @cached_property
    def plan_for(self) -> dict[StaticConfig, KernelPlan]:
        return {config: plan for plan in self.plans for config in plan.configs}

    @property
    def spec_sha256(self) -> str:
        return hashlib.sha256(self.spec.text.encode()).hexdigest()


def compile_spec(spec: Spec) -> Compiled:
    """Specialise ``spec`` for each static configuration and lower each distinct one; the
    passes fold only the reductions every kernel target supports."""
    check_kernel_names(spec)
    groups = distinct_programs(spec, all_configs(spec))
    foldable = kernel_reductions()
    return Compiled(spec, [build_plan(program, configs, foldable)
                           for configs, program in groups])
