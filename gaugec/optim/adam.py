"""DDCAdam: AdamW run in the canonical frame of every gauge orbit.

Let s be the canonical section of the plan's group G (gaugec.optim.section: the Kempf–Ness minimum-norm point of
the multiplicative gauges with its compact part fixed, and zero-mean seeds for the translations). s is constant on
orbits: s(g·θ) = s(θ) for every g in G. DDCAdam

  1. moves θ to s(θ) once, when it is constructed (the function is unchanged);
  2. takes the AdamW step there (torch's fused kernel: moments, bias correction, decoupled weight decay);
  3. projects the translation seeds back to zero mean (the update's vertical part) and re-balances the
     multiplicative blocks with ``rebalance_sweeps`` Gauss–Seidel sweeps of the closed-form balancing element.

Equivariance. Runs started from θ and from g·θ agree after step 1 (to the rounding of the section), and steps 2–3
are deterministic functions of the point and of the state, so both trajectories coincide in Θ and hence in Θ/G:
the function computed at every step does not depend on where on the orbit training started. The moments live in
the canonical frame; they are invariant and need no transport. Weight decay acts on the minimum-norm
representative, so it penalises an orbit invariant rather than pushing along the orbit (and it keeps the
translation sections, which are linear subspaces).

Policies. Orbit motion is removed (the "balance" policy): every step ends on, or within one sweep of, the
section. A step whose gradients contain NaN or inf is skipped on the device (parameters, moments and step counts
unchanged, ``skipped_steps`` counts it), with no host synchronisation.
"""
from __future__ import annotations

import torch
from torch.optim.adam import adam as adam_functional

from gaugec.optim.frame import CanonicalFrameOptimizer


def adamw_update(group: dict, params: list[torch.Tensor], state: dict, found_inf: torch.Tensor):
    """torch's fused AdamW on ``params`` (those with a gradient) with ``group``'s hyperparameters; a no-op, bit
    for bit, where ``found_inf`` is 1. The moments and the step counter live in ``state[p]``."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    for p in params:
        st = state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    beta1, beta2 = group["betas"]
    adam_functional(params, [p.grad for p in params], [state[p]["exp_avg"] for p in params],
                    [state[p]["exp_avg_sq"] for p in params], [], [state[p]["step"] for p in params], fused=True,
                    found_inf=found_inf, decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
                    lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"])


class DDCAdam(CanonicalFrameOptimizer):
    """G-equivariant AdamW for the gauges of ``plan`` (a :class:`gaugec.GaugePlan` bound to the trained model).

    Parameters in no gauge get plain AdamW. ``rebalance_sweeps`` (default 1) is the number of Gauss–Seidel sweeps
    per step that return the multiplicative blocks to the section; 0 keeps only the first canonicalisation.
    """

    def __init__(self, params, plan, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, maximize: bool = False, rebalance_sweeps: int = 1,
                 canonicalise: bool = True, canonical_tol: float | None = None, max_canonical_sweeps: int = 500):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid hyperparameters lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize,
                        fused=True)   # "fused": torch keeps the step counters on the device when loading
        super().__init__(params, plan, defaults, rebalance_sweeps=rebalance_sweeps, canonicalise=canonicalise,
                         canonical_tol=canonical_tol, max_canonical_sweeps=max_canonical_sweeps)

    def _base_step(self, found_inf):
        for group in self.param_groups:
            adamw_update(group, group["params"], self.state, found_inf)

    def _state_keys(self, group, scalars=False):
        return ("step",) if scalars else ("exp_avg", "exp_avg_sq")
