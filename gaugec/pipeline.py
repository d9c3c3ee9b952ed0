"""gaugec.compile (this module): capture -> discover -> prove -> plan."""
from __future__ import annotations

import copy
import os
import time
import warnings

import torch

from gaugec.capture import capture
from gaugec.discover import discover
from gaugec.plan import Gauge, PlanLeg
from gaugec.plan.plan import GaugePlan
from gaugec.prove import Proof

DEFAULT_TOL = 1e-10
FLOAT32_TOL = 1e-5


def model_f(model, inputs, loss):
    """What the loss sees: log-probabilities for cross entropy, else the raw output (.logits or first tensor)."""
    out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    out = first_tensor(out)
    if loss == "cross_entropy":
        return torch.log_softmax(out.to(torch.float64), dim=-1)
    return out


def first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, dict):
        if "logits" in out:
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def _module_prefix(params: list[str]) -> str:
    parts = [p.split(".")[:-1] for p in params]
    if not parts:
        return ""
    prefix = []
    for segs in zip(*parts):
        if all(s == segs[0] for s in segs):
            prefix.append(segs[0])
        else:
            break
    return ".".join(prefix)


def name_gauges(gauges: list[Gauge]):
    """family@module: the modules' common prefix, or the seed's own module where that prefix is shared."""
    common = [f"{g.family}@{_module_prefix(g.params)}" for g in gauges]
    counts: dict[str, int] = {}
    for g, base in zip(gauges, common):
        if common.count(base) > 1 or base.endswith("@"):
            base = f"{g.family}@{_module_prefix(g.params[:1]) or 'model'}"
        counts[base] = counts.get(base, 0) + 1
        g.name = base if counts[base] == 1 else f"{base}#{counts[base]}"


def _to_gauge(fg) -> Gauge:
    legs = []
    for lg in fg.legs:
        entries = None
        if lg.coords is not None:
            entries = fg.entries_of(lg.coords)
            if not (entries[:, 0] >= 0).any():
                continue
        legs.append(PlanLeg(lg.param, lg.role, lg.axis, entries, lg.offset, tuple(lg.axes), lg.site,
                            lg.site_index, lg.node, lg.select))
    return Gauge("", fg.family, fg.kind, list(zip(fg.block_kinds, fg.block_sizes)), legs,
                 proof=Proof(list(fg.citations)), additive_dim=fg.additive_dim, description=list(fg.probes))


class _LowPrecisionWatch(torch.overrides.TorchFunctionMode):
    """Notes whether a float64 forward pass produces any float32/16 tensor (a model that casts internally)."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, _types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype in (torch.float32, torch.float16, torch.bfloat16):
            self.seen = True
        return out


def compile(model, example_inputs=(), loss: str | None = "cross_entropy", tracer: str = "export",
            concrete_args=None, check: bool = True, seed: int = 0) -> GaugePlan:  # noqa: A001 - public API name
    """Capture, discover, prove and numerically check the gauges of ``model``; returns a :class:`GaugePlan`."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,) if not isinstance(example_inputs, list) else tuple(example_inputs)
    timings = {}
    t0 = time.perf_counter()
    gg = capture(model, example_inputs, tracer=tracer, concrete_args=concrete_args)
    timings["capture"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    disc = discover(gg, loss)
    timings["discover"] = time.perf_counter() - t0
    gauges = [_to_gauge(fg) for fg in disc.gauges]
    name_gauges(gauges)
    t0 = time.perf_counter()
    for g in gauges:
        g.proof.check()
    timings["prove"] = time.perf_counter() - t0
    plan = GaugePlan(model, gauges, loss=loss, graph=gg, example_inputs=example_inputs,
                     refusals=disc.refusals, unknown_ops=disc.unknown_ops, timings=timings)
    if check and not plan.model_is_meta():
        t0 = time.perf_counter()
        numeric_check(plan, seed=seed)
        timings["numeric"] = time.perf_counter() - t0
    plan.rejected = [g for g in plan.gauges if g.proof is not None and not g.proof.symbolic_ok]
    plan.rejected += [g for g in plan.gauges if g.proof is not None and g.proof.numeric_ok is False
                      and g not in plan.rejected]
    plan.gauges = [g for g in plan.gauges if g not in plan.rejected]
    if os.environ.get("GAUGEC_DEBUG"):
        for g in plan.rejected:
            print("REJECTED", g.name, g.proof.status, g.numeric_residual)
    return plan


@torch.no_grad()
def numeric_check(plan: GaugePlan, seed: int = 0, spread: float = 10.0):
    """Apply a large random element of each gauge to a float64 copy of the model: f must not change."""
    model64 = copy.deepcopy(plan.model).to(torch.float64).eval()
    inputs = tuple(x.to(torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                   for x in plan.example_inputs)
    bound = GaugePlan(model64, plan.gauges, loss=plan.loss, graph=plan.graph, example_inputs=inputs)
    watch = _LowPrecisionWatch()
    with watch:
        f0 = model_f(model64, inputs, plan.loss).to(torch.float64)
    finite = torch.isfinite(f0)
    if not bool(finite.any()):
        warnings.warn("gaugec: f(θ) is not finite at the example inputs (NaN/inf everywhere): the numeric check "
                      "was skipped; fix the inputs or the model (e.g. a norm with eps = 0 on a zero vector)")
        for g in plan.gauges:
            g.proof.numeric_note = "f(θ) not finite at the example inputs: numeric check skipped"
        return
    low = watch.seen
    tol = FLOAT32_TOL if low else DEFAULT_TOL
    note = "the model computes in float32 or lower inside forward (e.g. its norms): ~1e-7 is the floor" if low else ""
    scale = f0[finite].abs().max().clamp_min(1e-300)
    snapshot = {k: v.clone() for k, v in model64.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    for g in plan.gauges:
        element = g.random_element(gen, spread)
        bound.act([element], gauges=[g])
        f1 = model_f(model64, inputs, plan.loss).to(torch.float64)
        if not torch.equal(torch.isfinite(f1), finite):
            res = float("inf")      # the action changed which entries are finite
        else:
            res = float(((f1 - f0)[finite].abs().max() / scale).item())
        g.numeric_residual = res
        g.proof.numeric_residual = res
        g.proof.numeric_tol = tol
        g.proof.numeric_note = note
        model64.load_state_dict(snapshot)
