"""gaugec: a symbolic gauge-discovery compiler for PyTorch.

    plan = gaugec.compile(model, example_inputs, loss="cross_entropy")
    plan.gauges, plan.dim, plan.tangent_basis(), plan.random_element(), plan.act(g)
    gaugec.verify(model, example_inputs, plan)   # the Jacobian oracle
"""
from gaugec.capture import CaptureError, capture
from gaugec.pipeline import compile  # noqa: A004 - the public API name
from gaugec.plan import Gauge, PlanMismatchError
from gaugec.plan.plan import GaugePlan
from gaugec.prove import Proof, ProofError

__all__ = ["compile", "capture", "verify", "GaugePlan", "Gauge", "Proof", "CaptureError", "PlanMismatchError",
           "ProofError"]
__version__ = "0.1.0"

from gaugec import measure, optim  # noqa: E402,F401 - `import gaugec` is enough to reach them
from gaugec.oracle import verify  # noqa: E402 - the Jacobian oracle report (design section 5)
