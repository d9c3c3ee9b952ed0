"""gaugec.compile: capture -> discover -> prove -> plan, each step timed."""
from __future__ import annotations

import os
import time

from gaugec.capture import CaptureError, capture
from gaugec.discover import discover
from gaugec.plan import Gauge
from gaugec.plan.plan import GaugePlan
from gaugec.progress import Progress
from gaugec.prove.numeric import numeric_check


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


def compile(model, example_inputs=(), loss: str | None = "cross_entropy", tracer: str = "export",
            concrete_args=None, check: bool = True, seed: int = 0, output=None,
            strict: bool | None = None, memo: bool | None = None) -> GaugePlan:  # noqa: A001
    """Capture, discover, prove and numerically check the gauges of ``model``; returns a :class:`GaugePlan` whose
    ``gauges`` passed both halves of their proof and whose ``rejected`` did not.

    ``output`` says which output the loss sees (a key, an index, or a callable that selects it); by default
    ``.logits`` when the output has it, else every floating-point tensor output (a gauge must leave each
    unchanged). ``strict``: a discovery rule that raises re-raises instead of becoming a barrier (default: the
    ``GAUGEC_STRICT`` environment variable). ``memo``: a graph discovered before is read from the discovery memo
    (:mod:`gaugec.discover.memo`; default on unless ``GAUGEC_DISCOVERY_MEMO=0``); proofs and the numeric check run
    either way."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,) if not isinstance(example_inputs, list) else tuple(example_inputs)
    timings = {}
    with Progress("compile", total=4) as bar:
        bar.stage("capture")
        t0 = time.perf_counter()
        gg = capture(model, example_inputs, tracer=tracer, concrete_args=concrete_args)
        timings["capture"] = time.perf_counter() - t0
        bar.update(1, "discover")
        t0 = time.perf_counter()
        try:
            f_leaves = gg.f_leaves(output)
        except ValueError as exc:
            raise CaptureError(str(exc)) from exc
        disc = discover(gg, loss, f_leaves, strict, memo)
        timings["discover"] = time.perf_counter() - t0
        gauges = disc.gauges
        name_gauges(gauges)
        bar.update(1, f"prove {len(gauges)} gauges")
        t0 = time.perf_counter()
        for g in gauges:
            g.proof.check()
        timings["prove"] = time.perf_counter() - t0
        plan = GaugePlan(model, gauges, loss=loss, graph=gg, example_inputs=example_inputs,
                         refusals=disc.refusals, unknown_ops=disc.unknown_ops, timings=timings, f_leaves=f_leaves)
        plan.discovery_from_memo = disc.from_memo
        bar.update(1, "numeric check")
        if check and not plan.model_is_meta():
            t0 = time.perf_counter()
            numeric_check(plan, seed=seed)
            timings["numeric"] = time.perf_counter() - t0
        bar.update(1, "")
    plan.reject([g for g in gauges if not g.proof.symbolic_ok or g.proof.numeric_ok is False])
    if os.environ.get("GAUGEC_DEBUG"):
        for g in plan.rejected:
            print("REJECTED", g.name, g.proof.status, g.numeric_residual)
    return plan
