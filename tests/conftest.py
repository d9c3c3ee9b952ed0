import os
import tempfile

import pytest
import torch

# a private lemma cache per test session, so sympy really runs
os.environ.setdefault("GAUGEC_CACHE", tempfile.mkdtemp(prefix="gaugec-test-cache-"))
torch.set_num_threads(2)
# a discovery rule that raises fails the test instead of becoming a silent barrier (a test that wants the barrier
# behaviour sets strict=False)
os.environ["GAUGEC_STRICT"] = "1"


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


EQUIVARIANCE_STEPS = 50


@pytest.fixture(scope="module", params=["llama_gqa", "gpt2", "relu_mlp", "moe_mlp"])
def setup(request):
    """(name, float64 model, inputs, plan, label batches) for the equivariance tests of every DDC optimizer."""
    import gaugec
    from gaugec.optim import tasks

    model, inputs = tasks.float64_zoo(request.param)
    plan = gaugec.compile(model, inputs, loss="cross_entropy")
    return request.param, model, inputs, plan, tasks.label_batches(model, inputs, plan, EQUIVARIANCE_STEPS)
