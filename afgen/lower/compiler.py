"""The pipeline in one place: spec -> specialised programs -> kernel plans."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from afgen.backends.names import check_spec_names
from afgen.backends.targets import kernel_reductions
from afgen.lower.config import StaticConfig, all_configs, dynamic_statics, specialising_statics
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

    @cached_property
    def specialising(self) -> tuple[str, ...]:
        """The static predicates that key specialisations, in ``StaticConfig`` order."""
        return specialising_statics(self.spec)

    @cached_property
    def dynamic(self) -> tuple[str, ...]:
        """Bool options chosen at run time by ``if``s in the glue (never specialised)."""
        return dynamic_statics(self.spec)

    def config_for(self, values: dict[str, bool], factored: bool) -> StaticConfig:
        """The configuration that static predicate values (every one, as
        ``static_values`` gives them) select."""
        return StaticConfig(tuple((n, values[n]) for n in self.specialising), factored)

    @property
    def spec_sha256(self) -> str:
        return hashlib.sha256(self.spec.text.encode()).hexdigest()


def compile_spec(spec: Spec) -> Compiled:
    """Specialise ``spec`` for each static configuration and lower each distinct one; the
    passes fold only the reductions every kernel target supports."""
    check_spec_names(spec)
    groups = distinct_programs(spec, all_configs(spec))
    foldable = kernel_reductions()
    return Compiled(spec, [build_plan(program, configs, foldable)
                           for configs, program in groups])
