import os
import tempfile

import pytest
import torch

# a private lemma cache per test session, so sympy really runs
os.environ.setdefault("GAUGEC_CACHE", tempfile.mkdtemp(prefix="gaugec-test-cache-"))
torch.set_num_threads(2)


def family_dims(plan) -> dict:
    out = {}
    for g in plan.gauges:
        out[g.family] = out.get(g.family, 0) + g.dim
    return out


@pytest.fixture(scope="session")
def llama_plan():
    import gaugec
    from gaugec import zoo

    model, inputs = zoo.llama()
    return model, inputs, gaugec.compile(model, inputs)
