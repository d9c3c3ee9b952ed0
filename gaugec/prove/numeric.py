"""The numeric half of every proof: a large random element of each gauge, applied to a float64 twin of the model,
must leave f unchanged (relative residual ≤ 1e-10; 1e-5 where the model itself computes in float32 inside forward,
e.g. Hugging Face norms)."""
from __future__ import annotations

import warnings

import torch

from gaugec.functional import Float64Mode, float64_twin, model_f

DEFAULT_TOL = 1e-10
FLOAT32_TOL = 1e-5


@torch.no_grad()
def numeric_check(plan, seed: int = 0, spread: float = 10.0):
    """Apply a large random element of each gauge of ``plan`` (a :class:`gaugec.plan.plan.GaugePlan`) to a float64
    copy of the model: f must not change. Records the residual, the tolerance and any note in each gauge's proof."""
    model64, inputs = float64_twin(plan.model, plan.example_inputs)
    model64.eval()
    bound = plan.bind(model64)

    def f():
        with Float64Mode() as mode:
            out = model_f(model64, inputs, plan.loss, plan.f_leaves).to(torch.float64)
        return out, mode.seen

    f0, low = f()
    finite = torch.isfinite(f0)
    if not bool(finite.any()):
        warnings.warn("gaugec: f(θ) is not finite at the example inputs (NaN/inf everywhere): the numeric check "
                      "was skipped; fix the inputs or the model (e.g. a norm with eps = 0 on a zero vector)")
        for g in plan.gauges:
            g.proof.numeric_note = "f(θ) not finite at the example inputs: numeric check skipped"
        return
    tol = FLOAT32_TOL if low else DEFAULT_TOL
    note = "the model computes in float32 or lower inside forward (e.g. its norms): ~1e-7 is the floor" if low else ""
    scale = f0[finite].abs().max().clamp_min(1e-300)
    snapshot = {k: v.clone() for k, v in model64.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    for g in plan.gauges:
        element = g.random_element(gen, spread)
        undefined = ""
        try:
            bound.act([element], gauges=[g])
        except ValueError as exc:   # the action is undefined here (a rotation conjugated by a zero gain)
            undefined = str(exc)
        f1, _ = f()
        if undefined or not torch.equal(torch.isfinite(f1), finite):
            res = float("inf")      # no action, or one that changed which entries are finite
        else:
            res = float(((f1 - f0)[finite].abs().max() / scale).item())
        g.numeric_residual = res
        g.proof.numeric_residual = res
        g.proof.numeric_tol = tol
        g.proof.numeric_note = undefined or note
        model64.load_state_dict(snapshot)
