"""Discovery: run every seed's probe through the rule registry and solve the constraints into gauges."""
from __future__ import annotations

import dataclasses

from gaugec.capture import GaugeGraph
from gaugec.discover import rules  # noqa: F401  (registers the rules)
from gaugec.discover.engine import Engine
from gaugec.discover.rules.rope import find_rope_macros
from gaugec.discover.solve import FoundGauge, Refusal, solve


@dataclasses.dataclass
class Discovery:
    engine: Engine
    gauges: list[FoundGauge]
    refusals: list[Refusal]

    @property
    def unknown_ops(self) -> dict[str, int]:
        """Ops with no rule: how often a probe was stopped at one (0: in the graph, never reached)."""
        out = {k: 0 for k in self.engine.ops_without_rules()}
        out.update(self.engine.unknown_ops)
        return out


def discover(gg: GaugeGraph, loss: str | None = "cross_entropy", f_leaves: list[int] | None = None) -> Discovery:
    """The gauges of the captured graph; ``f_leaves``: which output leaves f is made of (default
    :meth:`GaugeGraph.f_leaves`)."""
    if loss not in ("cross_entropy", "mse", None):
        raise ValueError(f"loss must be 'cross_entropy', 'mse' or None, got {loss!r}")
    engine = Engine(gg, loss, f_leaves)
    find_rope_macros(engine)
    engine.seed_all()
    engine.run()
    gauges, refusals = solve(engine)
    return Discovery(engine, gauges, refusals)
