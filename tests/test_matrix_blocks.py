"""Matrix blocks beyond Muon: a block on a state tensor (its new value is the state's),
nested products, a literal repeat count; every backend against the oracle."""
import pytest

from afgen.check.verify import verify
from afgen.lower.compiler import compile_spec
from afgen.spec import parse_spec_text

ORTH = """\
optimizer: Orth
hyperparameters:
  lr: {type: float, default: 0.1}
layout:
  factored: ndim >= 2
state:
  m: {shape: full}
update:
  - m = 0.5 * m + grad
  - if: factored
    then:
      - matrix: m
        do:
          - repeat: 2
            do:
              - m = (m @ transpose(m)) @ m / (1 + sum(square(m)))
  - param = param - lr * m
"""


@pytest.fixture(scope="module")
def orth():
    return compile_spec(parse_spec_text(ORTH, "orth.yaml"))


def test_a_block_on_state_is_a_phase_boundary(orth):
    factored = next(p for p in orth.plans if p.factored)
    assert [r.kind for r in factored.program.reductions] == ["matrix_0"]
    assert len(factored.passes) == 2


def test_a_block_on_state_matches_the_oracle_everywhere(orth):
    """The MLX-ops update writes the block's result back to the state (it once left the
    state at its value before the block), and the fused drivers read it whole."""
    report = verify(orth, steps=3, backends=["mlx", "metal", "cuda"], dtypes=["float32"])
    assert report.passed, report.table()
