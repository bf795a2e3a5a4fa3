"""One torch thread for the evaluator tests: on the shared 2-core CI box, two OpenMP threads competing
with other test processes make these small models 3-70x slower; the results do not depend on it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
