"""Discovery: run every seed's probe through the rule registry and solve the constraints into gauges."""
from __future__ import annotations

import dataclasses

from gaugec.capture import GaugeGraph
from gaugec.discover.engine import Engine
from gaugec.discover.solve import Refusal, solve
from gaugec.plan.gauge import Gauge


@dataclasses.dataclass
class Discovery:
    engine: Engine
    gauges: list[Gauge]
    refusals: list[Refusal]

    @property
    def unknown_ops(self) -> dict[str, int]:
        """Ops with no rule: how often a probe was stopped at one (0: in the graph, never reached)."""
        out = {k: 0 for k in self.engine.ops_without_rules()}
        out.update(self.engine.unknown_ops)
        return out


def discover(gg: GaugeGraph, loss: str | None = "cross_entropy", f_leaves: list[int] | None = None,
             strict: bool | None = None) -> Discovery:
    """The gauges of the captured graph; ``f_leaves``: which output leaves f is made of (default
    :meth:`GaugeGraph.f_leaves`); ``strict``: a rule that raises re-raises (default ``GAUGEC_STRICT``)."""
    if loss not in ("cross_entropy", "mse", None):
        raise ValueError(f"loss must be 'cross_entropy', 'mse' or None, got {loss!r}")
    engine = Engine(gg, loss, f_leaves, strict)
    engine.seed_all()
    engine.run()
    gauges, refusals = solve(engine)
    return Discovery(engine, gauges, [Refusal(*f) for f in engine.rule_failures] + refusals)
