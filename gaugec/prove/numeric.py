"""The numeric half of every proof: a large random element of each gauge, applied to a float64 twin of the model,
must leave f unchanged (relative residual ≤ 1e-10; 1e-5 where the model itself computes in float32 inside forward,
e.g. Hugging Face norms). A gauge whose legs read a gain (a rotation seen through a norm gain) is checked a second
time with those gains moved off 1, where a conjugation by the wrong gain would show."""
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
        res, undefined = _residual(bound, g, element, f, f0, finite, scale)
        gains = sorted({lg.conj for lg in g.legs if lg.conj})
        if gains and not undefined:
            # a conjugation by the wrong gain is invisible where the gains are all 1 (their usual initialisation):
            # check again with the gains moved off 1 (f0 is recomputed there)
            model64.load_state_dict(snapshot)
            named = dict(model64.named_parameters(remove_duplicate=False))
            with torch.no_grad():
                for name in gains:
                    named[name].mul_(1 + 0.5 * (2 * torch.rand(named[name].shape, generator=gen,
                                                               dtype=torch.float64) - 1))
            g0, _ = f()
            moved, undefined = _residual(bound, g, element, f, g0, torch.isfinite(g0), g0.abs().max())
            res = max(res, moved)
        g.numeric_residual = res
        g.proof.numeric_residual = res
        g.proof.numeric_tol = tol
        g.proof.numeric_note = undefined or note
        model64.load_state_dict(snapshot)


def _residual(bound, gauge, element, f, f0, finite, scale) -> tuple[float, str]:
    """max |f(g·θ) − f(θ)| / max |f(θ)| (inf when the action is undefined or changes which entries are finite)."""
    try:
        bound.act([element], gauges=[gauge])
    except ValueError as exc:   # the action is undefined here (a rotation conjugated by a zero gain)
        return float("inf"), str(exc)
    f1, _ = f()
    if not torch.equal(torch.isfinite(f1), finite):
        return float("inf"), ""
    return float(((f1 - f0)[finite].abs().max() / scale.clamp_min(1e-300)).item()), ""
