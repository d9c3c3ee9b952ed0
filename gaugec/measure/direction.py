"""The directional Fisher along an approach, its order k̂ and the learning coefficient 1/(2k̂); directions
classified as gauge, singular or regular."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from gaugec.capture import unflatten_params
from gaugec.functional import first_tensor, float64_twin
from gaugec.measure.common import flat_params, params_of
from gaugec.measure.layers import loglog_slope


@dataclasses.dataclass
class DirectionalReading:
    order: float                  # k̂ = 1 + slope / 2
    coefficient: float            # 1 / (2 k̂)
    kind: str                     # "gauge" | "singular" | "regular"
    slope: float
    fit_r2: float
    ts: np.ndarray
    fisher: np.ndarray            # uᵀF(θ + t a)u per t


def _directional_fisher(model, info, theta: torch.Tensor, u: torch.Tensor, inputs, likelihood) -> float:
    """uᵀF(θ)u: the Fisher of the model's predictive distribution along u (exact, by a forward-mode derivative)."""

    def f(vec):
        return first_tensor(functional_call(model, unflatten_params(info, vec), inputs)).to(torch.float64)

    # the composite (math) attention kernel has forward-mode derivatives; the fused CPU kernel has none
    with sdpa_kernel([SDPBackend.MATH]):
        out, dout = jvp(f, (theta,), (u,))
    if likelihood == "gaussian":
        return float((dout ** 2).sum() / out.shape[0])
    p = torch.softmax(out, -1)
    # Fisher of a categorical in logit space, diag(p) - p pᵀ, in the centred form (no cancellation: a shift of all
    # logits reads exactly zero)
    val = (p * (dout - (p * dout).sum(-1, keepdim=True)) ** 2).sum(-1)
    return float(val.sum() / out.shape[0])


def directional_order(model, inputs, direction, approach=None, likelihood: str = "categorical", ts=None,
                      gauge_tol: float = 1e-20, direction_at=None) -> DirectionalReading:
    """Read uᵀF(θ + t·a)u over t (u = direction, a = approach, default u) and its log-log slope.

    θ is the model's current parameters. A direction is *gauge* when the Fisher along it is at rounding level
    (relative to the Fisher of a random direction, below ``gauge_tol``) along the whole approach.
    ``direction_at(θ')``, when given, supplies the direction to read at each point of the approach: a generator
    of a group action moves with the point (the orbit direction at (I + tA)θ is A(I + tA)θ, not Aθ)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    info, params = params_of(model)
    theta = flat_params(info, params).to(torch.float64)
    model64, inputs = float64_twin(model, inputs)     # never change the caller's model
    u = torch.as_tensor(direction, dtype=torch.float64).reshape(-1)
    if u.numel() != theta.numel():
        raise ValueError(f"direction has {u.numel()} entries, the model has {theta.numel()} parameters")
    if not bool(torch.isfinite(u).all()) or float(u.norm()) == 0.0:
        raise ValueError("direction is zero or holds NaN/inf: there is no direction to read")
    u = u / u.norm()
    a = u if approach is None else torch.as_tensor(approach, dtype=torch.float64).reshape(-1)
    ts = np.logspace(-3, -1, 9) if ts is None else np.asarray(ts, dtype=np.float64)
    F = []
    for t in ts:
        point = theta + float(t) * a
        ut = u if direction_at is None else direction_at(point)
        F.append(_directional_fisher(model64, info, point, ut / ut.norm(), inputs, likelihood))
    F = np.array(F)
    rnd = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = max(_directional_fisher(model64, info, theta + float(ts[-1]) * a, rnd / rnd.norm(), inputs, likelihood),
              1e-300)
    if np.all(np.abs(F) <= gauge_tol * ref):
        return DirectionalReading(math.inf, 0.0, "gauge", math.nan, math.nan, ts, F)
    slope, r2 = loglog_slope(ts, F)
    k = 1.0 + slope / 2.0
    kind = "regular" if k < 1.5 else "singular"
    return DirectionalReading(float(k), float(1.0 / (2.0 * k)), kind, float(slope), r2, ts, F)


def classify(model, inputs, directions, plan=None, **kw) -> list[dict]:
    """Read each direction as gauge / singular / regular. With a plan, a direction in the span of the plan's
    generators (``in_plan``) is read as that combination of generators, re-evaluated along the approach."""
    B = plan.tangent_basis() if plan is not None else None
    info, _ = params_of(model)
    out = []
    for d in directions:
        v = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
        row = {"in_plan": False}
        transport = None
        if B is not None and B.shape[0]:
            c = torch.linalg.lstsq(B.T, v.unsqueeze(1)).solution.squeeze(1)
            row["in_plan"] = float((B.T @ c - v).norm()) < 1e-8 * float(v.norm())
            if row["in_plan"]:
                def transport(point, c=c):
                    return plan.tangent_basis(unflatten_params(info, point)).T @ c
        r = directional_order(model, inputs, v, direction_at=transport, **kw)
        row.update(reading=r, kind=r.kind)
        out.append(row)
    return out
