"""DDCAdam: AdamW run in the canonical frame of every gauge orbit.

Let s be the canonical section of the plan's group G (gaugec.plan.executor: the Kempf–Ness minimum-norm point of
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

import warnings

import torch
from torch.optim.adam import adam as adam_functional

from gaugec.plan import PlanMismatchError
from gaugec.plan.executor import OrbitExecutor


class DDCAdam(torch.optim.Optimizer):
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
        super().__init__(params, defaults)
        self.plan = plan
        self.rebalance_sweeps = int(rebalance_sweeps)
        self.canonical_tol = canonical_tol
        self.max_canonical_sweeps = max_canonical_sweeps
        self._named, excluded = self._bind(plan)
        self._context = {n: p for n, p in plan._params().items() if n not in self._named}
        self.executor = OrbitExecutor(plan, excluded=excluded)
        devices = {p.device for p in self._named.values()}
        if len(devices) > 1:
            raise ValueError(f"DDCAdam: the gauged parameters live on several devices {sorted(map(str, devices))}")
        self._device = next(iter(devices)) if devices else torch.device("cpu")
        self.executor.to(self._device)
        self.canonical = False
        self.canonical_report: dict = {}
        self._skipped = torch.zeros((), dtype=torch.float32, device=self._device)
        if canonicalise:
            self.canonicalise()

    def _bind(self, plan) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The plan's parameters this optimizer may write (owned and trainable), and why each other one may not."""
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        named = dict(plan.model.named_parameters(remove_duplicate=False))
        out, excluded = {}, {}
        for name, info in plan._param_info.items():
            p = named.get(name)
            if p is None:
                raise PlanMismatchError(f"the plan's parameter {name!r} is not in its model any more")
            if tuple(p.shape) != tuple(info.shape):
                raise PlanMismatchError(f"parameter {name}: model shape {tuple(p.shape)}, plan {tuple(info.shape)}")
            if id(p) not in owned:
                excluded[name] = "not among this optimizer's parameters"
            elif not p.requires_grad:
                excluded[name] = "frozen (requires_grad=False)"
            else:
                out[name] = p
        gauged = {lg.param for g in plan.gauges for lg in g.legs}
        if gauged and not gauged & set(out):
            raise PlanMismatchError(
                "none of the plan's gauged parameters is among the optimizer's parameters: the plan belongs to "
                "another model; bind it to this one with plan.bind(model)")
        return out, excluded

    # -- the canonical frame ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def canonicalise(self) -> dict:
        """Move the parameters to the canonical section (done at construction; call it again after loading
        parameters from elsewhere into the model; the gradients of the next step must be taken afterwards)."""
        self.canonical_report = self.executor.canonicalise(self._named, tol=self.canonical_tol,
                                                           max_sweeps=self.max_canonical_sweeps,
                                                           context=self._context)
        held = self.canonical_report["held"]
        if held:
            listing = ", ".join(f"{name} ({len(blocks)})" for name, blocks in held.items())
            warnings.warn(f"gaugec: {sum(map(len, held.values()))} block(s) lie on unstable orbits (a zero or "
                          f"rank-deficient leg) and are held where they are until training makes them stable: "
                          f"{listing}", stacklevel=3)
        self.canonical = True
        return self.canonical_report

    def held_blocks(self) -> dict[str, list[int]]:
        """Per gauge, its blocks that lie on unstable orbits now (held where they are; synchronises the host)."""
        return self.executor.held_blocks(self._named)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient was not finite (reading it synchronises with the device)."""
        return int(self._skipped.item())

    # -- the step --------------------------------------------------------------------------------------------------
    def _found_inf(self, grads: list[torch.Tensor]) -> torch.Tensor:
        norms = torch._foreach_norm(grads)
        total = torch.stack([n.to(device=self._device, dtype=torch.float32) for n in norms]).sum()
        return (~torch.isfinite(total)).to(torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []
        all_grads = []
        for group in self.param_groups:
            params, grads, m1, m2, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("DDCAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                m1.append(state["exp_avg"])
                m2.append(state["exp_avg_sq"])
                steps.append(state["step"])
            groups.append((group, params, grads, m1, m2, steps))
            all_grads += grads
        if not all_grads:
            return loss
        found_inf = self._found_inf(all_grads)
        for group, params, grads, m1, m2, steps in groups:
            if not params:
                continue
            beta1, beta2 = group["betas"]
            adam_functional(params, grads, m1, m2, [], steps, fused=True, found_inf=found_inf,
                                  decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
                                  lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                                  maximize=group["maximize"])
        self._skipped.add_(found_inf)
        self.executor.project_translations(self._named, skip=found_inf)
        self.executor.rebalance(self._named, self.rebalance_sweeps, skip=found_inf)
        return loss

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self):
        sd = super().state_dict()
        sd["ddc"] = {"canonical": self.canonical, "skipped_steps": self._skipped.clone(),
                     "plan_signature": self.plan.signature(),
                     "gauges": [g.name for g in self.executor.mult_gauges + self.executor.add_gauges]}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        ddc = state_dict.pop("ddc", None)
        if not isinstance(ddc, dict) or "canonical" not in ddc:
            raise ValueError("not a DDCAdam state dict: the 'ddc' entry is missing or corrupted")
        if ddc.get("plan_signature") != self.plan.signature():
            raise PlanMismatchError("the state dict was saved for a plan of another model (parameter shapes differ)")
        mine = [g.name for g in self.executor.mult_gauges + self.executor.add_gauges]
        if ddc.get("gauges") != mine:
            raise PlanMismatchError("the state dict was saved with other gauges in the canonical frame")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                for key in ("exp_avg", "exp_avg_sq"):
                    t = st.get(key)
                    if t is None or t.shape != p.shape:
                        raise ValueError(f"corrupted DDCAdam state: {key} has shape "
                                         f"{None if t is None else tuple(t.shape)}, its parameter {tuple(p.shape)}")
                    if not bool(torch.isfinite(t).all()):
                        raise ValueError(f"corrupted DDCAdam state: {key} holds NaN or inf")
                if not torch.is_tensor(st.get("step")):
                    raise ValueError("corrupted DDCAdam state: 'step' is missing")
        self.canonical = bool(ddc["canonical"])
        self._skipped = torch.as_tensor(ddc["skipped_steps"], dtype=torch.float32).to(self._device).clone()
