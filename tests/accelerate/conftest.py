"""The accelerate oracle (Hugging Face accelerate, test-only) keeps process-wide state: each
test that makes one of its Accelerators starts from a clean slate."""

import pytest


@pytest.fixture
def hf_accelerate():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield accelerate
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
