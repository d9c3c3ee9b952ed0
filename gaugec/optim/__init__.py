"""Gauge-equivariant optimizers (design section 6): the plan's orbits are factored out before the base step.

    opt = gaugec.optim.DDCAdam(model.parameters(), plan, lr=3e-4, weight_decay=0.1)
    opt = gaugec.optim.DDCMuon(model.parameters(), plan, lr=0.02, adamw_lr=3e-4)

See docs/ddc.md for the algorithm, its equivariance argument and the policies (orbit motion, weight decay, NaN).
"""
from gaugec.optim.adam import DDCAdam
from gaugec.optim.muon import DDCMuon, muon_parameters

__all__ = ["DDCAdam", "DDCMuon", "muon_parameters"]
