"""Discovery: run every seed's probe through the rule registry and solve the constraints into gauges."""
from __future__ import annotations

import dataclasses

from gaugec.capture import GaugeGraph
from gaugec.discover import memo as discovery_memo
from gaugec.discover.engine import Engine
from gaugec.discover.registry import strict_default
from gaugec.discover.solve import Refusal, solve
from gaugec.plan.gauge import Gauge


@dataclasses.dataclass
class Discovery:
    gauges: list[Gauge]
    refusals: list[Refusal]
    unknown_ops: dict[str, int]   # ops with no rule: how often a probe was stopped at one (0: never reached)
    from_memo: bool = False       # read from the discovery memo (:mod:`gaugec.discover.memo`)
    replayed: int = 0             # probes replayed from a template layer (:mod:`gaugec.discover.layers`)


def discover(gg: GaugeGraph, loss: str | None = "cross_entropy", f_leaves: list[int] | None = None,
             strict: bool | None = None, memo: bool | None = None) -> Discovery:
    """The gauges of the captured graph; ``f_leaves``: which output leaves f is made of (default
    :meth:`GaugeGraph.f_leaves`); ``strict``: a rule that raises re-raises (default ``GAUGEC_STRICT``); ``memo``:
    read and write the discovery memo (default: on unless ``GAUGEC_DISCOVERY_MEMO=0``)."""
    if loss not in ("cross_entropy", "mse", None):
        raise ValueError(f"loss must be 'cross_entropy', 'mse' or None, got {loss!r}")
    strict = strict_default() if strict is None else strict
    key = None
    if discovery_memo.memo_enabled(memo):
        key = discovery_memo.memo_key(gg, loss, f_leaves, strict)
        hit = discovery_memo.load(key)
        if hit is not None:
            gauges, refusals, unknown_ops = hit
            return Discovery(gauges, [Refusal(*r) for r in refusals], unknown_ops, from_memo=True)
    engine = Engine(gg, loss, f_leaves, strict)
    engine.seed_all()
    engine.run()
    gauges, refusals = solve(engine)
    refusals = [Refusal(*f) for f in engine.rule_failures] + refusals
    unknown_ops = {k: 0 for k in engine.ops_without_rules()}
    unknown_ops.update(engine.unknown_ops)
    if key is not None:
        discovery_memo.store(key, gauges, [dataclasses.astuple(r) for r in refusals], unknown_ops)
    return Discovery(gauges, refusals, unknown_ops, replayed=engine.replayed)
