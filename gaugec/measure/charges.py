"""Conserved charges of a plan's generators (Q(θ) = ½ θ·ξ(θ)), their SGD drift, and a monitor along training."""
from __future__ import annotations

import math

import numpy as np
import torch

from gaugec.capture import unflatten_params
from gaugec.measure.common import params_of, flat_params


def charges(plan, params: dict | None = None, kinds=("mult", "add")) -> torch.Tensor:
    """Q_b(θ) = ½ θ·ξ_b(θ) for multiplicative generators, ⟨ξ_b, θ⟩ for translations (one per tangent row), for the
    gauges whose kind is in ``kinds``. Rotation gauges (compact blocks) have none: a skew generator gives θ·ξ = 0
    identically on the legs it moves by R, and the gain-conjugated readers make ½ θ·ξ neither zero on the section
    nor conserved (the action is not linear in θ: it reads the gains), so they are left out."""
    info, cur = params_of(plan.model)
    theta = flat_params(info, cur if params is None else params).to(torch.float64)
    rows = []
    for g in (g for g in plan.gauges if g.kind in kinds and not g.compact):
        T = plan.gauge_tangents(g)
        rows.append(0.5 * T @ theta if g.kind == "mult" else T @ theta)
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)


def generator_matrices(plan, gauge) -> list[torch.Tensor]:
    """For a multiplicative gauge, the matrices A_b with ξ_b(θ) = A_b θ (the action is linear in θ)."""
    info, _ = params_of(plan.model)
    n = sum(int(np.prod(i.shape, dtype=np.int64)) for i in info.values())
    E = torch.eye(n, dtype=torch.float64)
    cols = [plan.gauge_tangents(gauge, unflatten_params(info, E[j])) for j in range(n)]
    T = torch.stack(cols, dim=-1)     # [dim, n, n]: T[b, :, j] = A_b e_j
    return list(T)


def predicted_sgd_drift(A: torch.Tensor, g: torch.Tensor, lr: float) -> float:
    """The exact change of ½θᵀAθ under θ <- θ - lr g when g ⊥ Aθ (a gradient of an invariant loss): ½ lr² gᵀAg."""
    return float(0.5 * lr ** 2 * (g @ (A @ g)))


class ChargeMonitor:
    """Tracks the conserved charges of a plan during training (call :meth:`record` after each step).

    Gradient flow keeps every charge constant. A plain SGD step θ − ηg changes ½θᵀAθ by exactly ½η²gᵀAg. Under
    decoupled weight decay λ (dθ/dt = −∇L − λθ), Q̇ = −2λQ, so Q(t) = Q(0) e^{−2λt}, t the integrated learning rate.
    """

    def __init__(self, plan):
        self.plan = plan
        self.history: list[torch.Tensor] = []
        self.steps: list[int] = []

    def record(self, step: int | None = None) -> torch.Tensor:
        q = charges(self.plan)
        self.history.append(q)
        self.steps.append(len(self.steps) if step is None else step)
        return q

    def drift(self) -> torch.Tensor:
        """Change of every charge since the first record, relative to its scale (max |Q| at the start, or 1)."""
        if not self.history:
            return torch.zeros(0, dtype=torch.float64)
        q0 = self.history[0]
        scale = q0.abs().max().clamp_min(1.0)
        return (self.history[-1] - q0) / scale

    @staticmethod
    def predicted_decay(q0: torch.Tensor, weight_decay: float, time: float) -> torch.Tensor:
        """Q(t) = Q(0) e^{−2λt} under gradient flow with uniform (decoupled) weight decay λ."""
        return q0 * math.exp(-2.0 * weight_decay * time)
