"""gaugec.compile (this module): capture -> discover -> prove -> plan."""
from __future__ import annotations

import copy
import os
import time
import warnings

import torch
from torch.utils import _pytree as pytree

from gaugec.capture import CaptureError, capture
from gaugec.discover import discover
from gaugec.plan import Gauge, PlanLeg
from gaugec.plan.plan import GaugePlan
from gaugec.prove import Proof

DEFAULT_TOL = 1e-10
FLOAT32_TOL = 1e-5


def model_f(model, inputs, loss, leaves=None):
    """f, what the loss sees, at the model's current parameters (see :func:`f_value`)."""
    return f_value(model(*inputs) if isinstance(inputs, tuple) else model(inputs), loss, leaves)


def f_value(out, loss, leaves=None):
    """f from a model output: the output leaves the loss sees (``leaves``: indices into the output's pytree leaves;
    default :func:`output_leaves`). One leaf: itself, as log-probabilities for cross entropy. Several: all of them,
    flattened and concatenated (a gauge must leave each unchanged; no shift invariance is assumed)."""
    flat = pytree.tree_leaves(out)
    idx = output_leaves(out) if leaves is None else leaves
    picked = [flat[i] for i in idx]
    if len(picked) == 1:
        t = picked[0]
        return torch.log_softmax(t.to(torch.float64), dim=-1) if loss == "cross_entropy" else t
    return torch.cat([t.reshape(-1).to(torch.float64) for t in picked])


def output_leaves(out, output=None) -> list[int]:
    """Which pytree leaves of a model output f is made of. ``output`` None: ``.logits`` (or a ``"logits"`` key) when
    there is one, else every floating-point tensor; a key or an index: that entry; a callable: the tensors it
    returns (it must select, e.g. ``lambda out: out[1]``, not compute)."""
    flat = pytree.tree_leaves(out)
    if output is None:
        logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
        picked = [logits] if isinstance(logits, torch.Tensor) else \
            [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]
    else:
        try:
            sel = output(out) if callable(output) else out[output]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"output={output!r} does not select an entry of the model's output "
                             f"({type(out).__name__}): {exc}") from exc
        picked = [t for t in pytree.tree_leaves(sel) if isinstance(t, torch.Tensor)]
    idx = [i for i, t in enumerate(flat) if any(t is q for q in picked)]
    if not idx or len(idx) != len(picked) or any(not flat[i].is_floating_point() for i in idx):
        raise ValueError(f"output={output!r}: f must be floating-point tensors of the model's output (a callable "
                         "must return entries of it, not compute new tensors)")
    return idx


def first_tensor(out):
    """The measurement tools' output: ``.logits``, else the first tensor."""
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


_LOW_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Float64Mode(torch.overrides.TorchFunctionMode):
    """Runs a forward pass in float64: a cast to a lower float precision inside forward (``one_hot(i).float()``,
    Hugging Face's ``.to(torch.float32)`` in its norms) goes to float64 instead, so a float64 model computes in
    float64 throughout. ``seen`` notes whether a low-precision tensor still appeared."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, _types, args=(), kwargs=None):
        if func in (torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16):
            func = torch.Tensor.double
        kwargs = kwargs or {}
        if kwargs.get("dtype") in _LOW_FLOATS:
            kwargs = {**kwargs, "dtype": torch.float64}
        args = tuple(torch.float64 if isinstance(a, torch.dtype) and a in _LOW_FLOATS else a for a in args)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dtype in _LOW_FLOATS:
            self.seen = True
        return out


def compile(model, example_inputs=(), loss: str | None = "cross_entropy", tracer: str = "export",
            concrete_args=None, check: bool = True, seed: int = 0, output=None) -> GaugePlan:  # noqa: A001
    """Capture, discover, prove and numerically check the gauges of ``model``; returns a :class:`GaugePlan`.

    ``output`` says which output the loss sees (a key, an index, or a callable that selects it); by default
    ``.logits`` when the output has it, else every floating-point tensor output (a gauge must leave each
    unchanged)."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,) if not isinstance(example_inputs, list) else tuple(example_inputs)
    timings = {}
    t0 = time.perf_counter()
    gg = capture(model, example_inputs, tracer=tracer, concrete_args=concrete_args)
    timings["capture"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        f_leaves = gg.f_leaves(output)
    except ValueError as exc:
        raise CaptureError(str(exc)) from exc
    disc = discover(gg, loss, f_leaves)
    timings["discover"] = time.perf_counter() - t0
    gauges = [_to_gauge(fg) for fg in disc.gauges]
    name_gauges(gauges)
    t0 = time.perf_counter()
    for g in gauges:
        g.proof.check()
    timings["prove"] = time.perf_counter() - t0
    plan = GaugePlan(model, gauges, loss=loss, graph=gg, example_inputs=example_inputs,
                     refusals=disc.refusals, unknown_ops=disc.unknown_ops, timings=timings, f_leaves=f_leaves)
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
        bound.act([element], gauges=[g])
        f1, _ = f()
        if not torch.equal(torch.isfinite(f1), finite):
            res = float("inf")      # the action changed which entries are finite
        else:
            res = float(((f1 - f0)[finite].abs().max() / scale).item())
        g.numeric_residual = res
        g.proof.numeric_residual = res
        g.proof.numeric_tol = tol
        g.proof.numeric_note = note
        model64.load_state_dict(snapshot)
