"""DDCMuon: Muon on the hidden matrices and AdamW on the rest, both run in the canonical frame of every gauge orbit.

The Muon path follows ``torch.optim.Muon``: momentum buffer B ← μB + (1 − μ)g (torch's lerp form), Nesterov update
g + μ(B − g), Newton–Schulz orthogonalisation with the quintic coefficients (3.4445, −4.7750, 2.0315), decoupled
weight decay W ← (1 − ηλ)W and the step W ← W − η·adjust(shape)·NS(update). The AdamW path is DDCAdam's.

Equivariance (docs/ddc.md, "DDCMuon"). The section s removes the non-compact part of every gauge, and fixes the
compact part by equivariant conventions, so runs from θ and g·θ meet at s(θ) and every later step is a deterministic
function of the point and the state: they coincide. The conventions are a bookkeeping choice, not a dynamical one:
the compact part left after balancing acts on each matrix by orthogonal maps on its rows or columns (a head's O(m),
a RoPE pair's SO(2), the ±1 of a gain or a SwiGLU unit, block-diagonal for GQA-shared heads and fused QKV), and
polar(U G V) = U polar(G) V, so the Muon step itself commutes with it. The non-compact part (diagonal scalings,
general GL maps) does not commute with polar(), which is why Muon needs the frame.

Routing (:func:`muon_parameters`): Muon takes the 2-D weight of every ``nn.Linear`` except the output head (a linear
whose output reaches f with no other parameter on the way) and any weight tied to an embedding; everything else
(embeddings, the head, gains, biases, conv kernels) takes AdamW. A param group with ``use_muon`` set overrides the
rule for its parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from gaugec.optim.adam import adamw_update
from gaugec.optim.frame import CanonicalFrameOptimizer, local_part, rows_of, shard_of, whole

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)      # torch.optim.Muon's (Keller Jordan's) quintic
NS_EPS = 1e-7


def muon_parameters(plan) -> set[str]:
    """Names of the hidden matrices Muon takes: 2-D ``nn.Linear`` weights that are neither the output head nor
    tied to an embedding. The head is read off the captured graph: a parameter consumed by a node from which f is
    reached through nodes that read no other parameter."""
    model = plan.model
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    names = {name for name, p in model.named_parameters() if p.ndim == 2 and id(p) in linear and id(p) not in tied}
    if plan.graph is None:
        raise ValueError("DDCMuon routes parameters by the captured graph: compile the plan with example inputs, "
                         "or set use_muon in every param group")
    return names - _output_heads(plan.graph)


def _output_heads(gg) -> set[str]:
    """Parameters whose consumer reaches the model output through nodes that read no other parameter."""
    graph = gg.graph
    # nodes computed from one parameter alone (the parameter and its views): node -> that parameter
    owner: dict = {}
    for n in graph.nodes:
        if n.op == "placeholder" and n.name in gg.placeholder_param:
            owner[n] = gg.placeholder_param[n.name]
        elif n.op == "call_function" and n.all_input_nodes:
            srcs = {owner.get(a) for a in n.all_input_nodes}
            if len(srcs) == 1 and None not in srcs:
                owner[n] = srcs.pop()
    heads = set()
    outputs = set(gg.user_output_nodes())
    for node, param in owner.items():
        stack, seen = [u for u in node.users if u not in owner], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in outputs or n.op == "output":
                heads.add(param)
                break
            if any(owner.get(a) not in (None, param) for a in n.all_input_nodes):
                continue            # another parameter is read here: not the last layer
            stack.extend(n.users)
    return heads


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = NS_EPS,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """The quintic Newton–Schulz iteration of torch.optim.Muon (≈ the polar factor U Vᵀ of G = U S Vᵀ, singular
    values landing in about [0.7, 1.2]) on one matrix [m, n] or a batch [b, m, n]; computed in ``dtype`` (torch's:
    bfloat16), returned in G's dtype."""
    a, b, c = coefficients
    wide = G.shape[-2] <= G.shape[-1]
    X = (G if wide else G.mT).to(dtype or torch.bfloat16)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    gemm = torch.addmm if X.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = X @ X.mT
        X = gemm(X, gemm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
    return (X if wide else X.mT).to(G.dtype)


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape) -> float:
    """torch.optim.Muon's learning-rate adjustment for a matrix of ``shape``."""
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * max(1.0, A / B) ** 0.5
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * max(A, B) ** 0.5
    raise ValueError(f"adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")


class DDCMuon(CanonicalFrameOptimizer):
    """G-equivariant Muon (hidden matrices) + AdamW (the rest) for the gauges of ``plan``, in one optimizer.

    ``lr``, ``momentum``, ``nesterov``, ``ns_steps``, ``weight_decay`` and ``adjust_lr_fn`` are the Muon path's
    (torch.optim.Muon's meaning); ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and ``adamw_weight_decay`` (default
    ``weight_decay``) the AdamW path's. Newton–Schulz runs in ``ns_dtype`` (default: bfloat16 as torch does, float64
    for float64 parameters, where exact equivariance is stated), batched over same-shape matrices where
    ``ns_batched`` (default: on accelerators, not on the CPU). A param group may set ``use_muon`` (and, for the
    AdamW path of a group that is split by the routing rule, ``adamw_lr`` / ``adamw_weight_decay``).
    """

    def __init__(self, params, plan, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.1, adjust_lr_fn: str | None = None,
                 adamw_lr: float = 3e-4, adamw_betas=(0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float | None = None, *, ns_coefficients=NS_COEFFICIENTS, ns_eps: float = NS_EPS,
                 ns_dtype: torch.dtype | None = None, ns_batched: bool | None = None, rebalance_sweeps: int = 1,
                 canonicalise: bool = True,
                 canonical_tol: float | None = None, max_canonical_sweeps: int = 500):
        if lr < 0 or adamw_lr < 0 or weight_decay < 0 or momentum < 0 or ns_steps < 1 or \
                not all(0.0 <= b < 1.0 for b in adamw_betas):
            raise ValueError(f"invalid hyperparameters lr={lr}, momentum={momentum}, ns_steps={ns_steps}, "
                             f"weight_decay={weight_decay}, adamw_lr={adamw_lr}, adamw_betas={adamw_betas}")
        adjust_lr(1.0, adjust_lr_fn, (1, 1))            # validates the name
        adamw_wd = weight_decay if adamw_weight_decay is None else adamw_weight_decay
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coefficients=tuple(ns_coefficients), ns_eps=ns_eps, weight_decay=weight_decay,
                        adjust_lr_fn=adjust_lr_fn, betas=tuple(adamw_betas), eps=adamw_eps, maximize=False,
                        fused=True)      # "fused": torch keeps AdamW's step counters on the device when loading
        self.ns_dtype = ns_dtype
        self.ns_batched = ns_batched
        groups = _route(params, plan, adamw_lr, adamw_wd)
        super().__init__(groups, plan, defaults, rebalance_sweeps=rebalance_sweeps, canonicalise=canonicalise,
                         canonical_tol=canonical_tol, max_canonical_sweeps=max_canonical_sweeps)

    def _base_step(self, found_inf):
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_update(group, found_inf)
            else:
                adamw_update(group, group["params"], self.state, found_inf)

    def _muon_update(self, group: dict, found_inf: torch.Tensor):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        skip, keep = found_inf.bool(), 1 - found_inf
        momentum = group["momentum"]
        by_shape: dict[tuple, list[int]] = {}
        updates = []
        for i, p in enumerate(params):
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = local_part(st["momentum_buffer"])        # FSDP2: this rank's rows (the momentum is elementwise)
            g = torch.where(skip, 0.0, local_part(p.grad))     # a skipped step: buf.lerp_(0, 0) is buf, bit for bit
            buf.lerp_(g, ((1 - momentum) * keep).to(buf.dtype))
            update = g.lerp(buf, momentum) if group["nesterov"] else buf
            # Newton–Schulz needs the whole matrix: a sharded update is gathered and every rank orthogonalises it
            # (the same numbers everywhere), then keeps its own rows
            updates.append(whole(update, p) if hasattr(p, "device_mesh") else update)
            ns_dtype = self.ns_dtype or (torch.float64 if p.dtype == torch.float64 else torch.bfloat16)
            # one batched iteration per shape on accelerators; on the CPU batched GEMMs are no faster than a loop
            # and the stacking copies, so each matrix is its own batch (``ns_batched`` overrides)
            batched = p.device.type != "cpu" if self.ns_batched is None else self.ns_batched
            key = (tuple(p.shape), p.dtype, ns_dtype, None if batched else i)
            by_shape.setdefault(key, []).append(i)
        ortho: list = [None] * len(params)
        ns = dict(steps=group["ns_steps"], coefficients=group["ns_coefficients"], eps=group["ns_eps"])
        for (_, _, ns_dtype, _), idx in by_shape.items():
            if len(idx) == 1:
                ortho[idx[0]] = newton_schulz(updates[idx[0]], dtype=ns_dtype, **ns)
                continue
            out = newton_schulz(torch.stack([updates[i] for i in idx]), dtype=ns_dtype, **ns)
            for i, o in zip(idx, out.unbind(0)):
                ortho[i] = o
        lr, wd = group["lr"], group["weight_decay"]
        for p, o in zip(params, ortho):
            step = adjust_lr(lr, group["adjust_lr_fn"], p.shape)
            # the factors stay 0-dim in float32 (float64 for float64 parameters): like torch's Python scalars they
            # are applied at the kernel's compute precision, not rounded to bf16 first
            opmath = torch.float64 if p.dtype == torch.float64 else torch.float32
            if hasattr(p, "device_mesh"):
                p, o = local_part(p), rows_of(o, shard_of(p))
            p.mul_((1 - lr * wd * keep).to(opmath))
            p.add_(o * (-step * keep).to(opmath))

    def _state_keys(self, group, scalars=False):
        if group["use_muon"]:
            return () if scalars else ("momentum_buffer",)
        return ("step",) if scalars else ("exp_avg", "exp_avg_sq")


def _route(params, plan, adamw_lr: float, adamw_wd: float) -> list[dict]:
    """Param groups with ``use_muon`` set: a group without it is split by :func:`muon_parameters`."""
    groups = list(params)
    if not groups:
        raise ValueError("DDCMuon got an empty parameter list")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    routed = None
    out = []
    for group in groups:
        ps = list(group["params"]) if not isinstance(group["params"], torch.Tensor) else [group["params"]]
        if "use_muon" in group:
            parts = [(bool(group["use_muon"]), ps)]
        else:
            if routed is None:
                names = muon_parameters(plan)
                routed = {id(p) for n, p in plan.model.named_parameters() if n in names}
            parts = [(True, [p for p in ps if id(p) in routed]), (False, [p for p in ps if id(p) not in routed])]
        for use_muon, members in parts:
            if not members:
                continue
            g = {k: v for k, v in group.items() if k not in ("adamw_lr", "adamw_weight_decay")}
            g.update(params=members, use_muon=use_muon)
            if not use_muon and "use_muon" not in group:
                g["lr"] = group.get("adamw_lr", adamw_lr)
                g["weight_decay"] = group.get("adamw_weight_decay", adamw_wd)
            if use_muon and any(p.ndim != 2 for p in members):
                raise ValueError("Muon takes 2-D matrices only: a param group with use_muon=True holds a tensor of "
                                 f"shape {next(tuple(p.shape) for p in members if p.ndim != 2)}")
            out.append(g)
    return out
