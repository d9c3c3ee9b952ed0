"""Dead-direction measurement at a checkpoint, without sampling (issue 3; first part).

* :func:`layer_readings`: spectra at one layer. The activation side is X, the layer's output as an N x width matrix,
  with its smallest singular value. The Fisher side is the Gram G = (1/N) Σ δᵢδᵢᵀ of the per-sample gradients of
  the loss w.r.t. that output (torch.func: vmap of grad, no Python loop over samples). From G it reports the smallest
  eigenvalue above the cutoff λ⁺_min and the active volume log det⁺ G.
* :func:`directional_order`: the directional Fisher uᵀF(θ + t a)u over a grid of t. A log-log slope s gives the
  order k̂ = 1 + s/2 and the per-direction learning coefficient 1/(2k̂). The direction is classified as *gauge*
  (Fisher zero along the whole approach), *singular* (k̂ ≥ 2) or *regular* (k̂ = 1).
* :func:`charges`: the conserved charge of every generator of a plan, Q(θ) = ½ θ·ξ(θ) (linear actions: ½ θᵀAθ, e.g.
  ‖row_i W_in‖² + b_i² − ‖col_i W_out‖² for a rescale), and ⟨ξ, θ⟩ for translations. Gradient flow conserves them.
  One SGD step θ − ηg changes ½θᵀAθ by exactly ½η² gᵀAg (:func:`predicted_sgd_drift`).

Cutoff policy: an eigenvalue of G is *dead* when it is below ``rel_cutoff`` x the largest (default 1e-10, the
oracle's), *active* otherwise. A cutoff above the smallest dead eigenvalue miscounts; the readings report the count.
"""

from gaugec.measure.charges import ChargeMonitor, charges, generator_matrices, predicted_sgd_drift  # noqa: F401
from gaugec.measure.common import infer_likelihood  # noqa: F401
from gaugec.measure.direction import DirectionalReading, classify, directional_order  # noqa: F401
from gaugec.measure.layers import (LayerReadings, TrajectoryReadings, layer_parameter_fisher, layer_readings,  # noqa: F401
                                   loglog_slope, readings_along)
