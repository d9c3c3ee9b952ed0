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
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from gaugec.capture import param_offsets, unflatten_params, unique_named_parameters
from gaugec.pipeline import first_tensor


@dataclasses.dataclass
class LayerReadings:
    layer: str
    sigma_min: float              # smallest singular value of X (N x width)
    activation_spectrum: np.ndarray
    spectrum: np.ndarray          # eigenvalues of the Fisher Gram, descending
    lambda_min_plus: float        # smallest eigenvalue above the cutoff
    logdet_plus: float            # Σ log λ over the active eigenvalues
    n_active: int
    n_dead: int
    cutoff: float
    n_rows: int


@dataclasses.dataclass
class DirectionalReading:
    order: float                  # k̂ = 1 + slope / 2
    coefficient: float            # 1 / (2 k̂)
    kind: str                     # "gauge" | "singular" | "regular"
    slope: float
    fit_r2: float
    ts: np.ndarray
    fisher: np.ndarray            # uᵀF(θ + t a)u per t


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _params(model):
    info = unique_named_parameters(model)
    named = dict(model.named_parameters(remove_duplicate=False))
    return info, {k: named[k].detach() for k in info}


def _flat(info, params) -> torch.Tensor:
    return torch.cat([params[k].reshape(-1) for k in info])


def _module(model, name):
    mods = dict(model.named_modules())
    if name not in mods:
        raise KeyError(f"no submodule named {name!r}; known: {', '.join(k for k in mods if k)[:300]}")
    return mods[name]


def _per_token_loss(out: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    if likelihood == "categorical":
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")
    if likelihood == "gaussian":
        return 0.5 * ((out - y) ** 2).sum()
    raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}")


def _sample_labels(out: torch.Tensor, likelihood: str, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution (the true Fisher)."""
    if likelihood == "categorical":
        probs = torch.softmax(out.detach().to(torch.float64), -1).reshape(-1, out.shape[-1])
        return torch.multinomial(probs, 1, generator=gen).reshape(out.shape[:-1])
    return out.detach() + torch.randn(out.shape, generator=gen, dtype=out.dtype)


# ---------------------------------------------------------------------------------------------------------------
# layer readings


def infer_likelihood(likelihood: str | None, targets) -> str:
    """The likelihood the Fisher is read under: as given, or from the targets (integer labels: categorical,
    floating-point targets: gaussian); a given one must fit the targets."""
    if likelihood not in (None, "categorical", "gaussian"):
        raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}")
    if targets is None:
        if likelihood is None:
            raise ValueError("without targets the likelihood cannot be inferred: pass likelihood='categorical' "
                             "(a classifier or language model) or likelihood='gaussian' (a regression)")
        return likelihood
    floating = torch.as_tensor(targets).is_floating_point()
    inferred = "gaussian" if floating else "categorical"
    if likelihood is not None and likelihood != inferred:
        raise ValueError(f"likelihood={likelihood!r} does not fit {'floating-point' if floating else 'integer'} "
                         f"targets (they imply {inferred!r})")
    return inferred


def layer_readings(model, inputs, targets, layer: str, fisher: str = "empirical",
                   likelihood: str | None = None, rel_cutoff: float = 1e-10, seed: int = 0) -> LayerReadings:
    """Activation and Fisher-Gram readings at submodule ``layer`` (see the module docstring).

    ``inputs``: a batch tensor (first axis = samples) or a tuple of them; ``targets``: observed labels (used by the
    empirical Fisher; ignored by ``fisher="true"``, which samples labels from the model). ``likelihood``:
    "categorical" or "gaussian", inferred from the targets when not given (:func:`infer_likelihood`)."""
    if fisher not in ("empirical", "true"):
        raise ValueError(f"fisher must be 'empirical' or 'true', got {fisher!r}")
    likelihood = infer_likelihood(likelihood, targets)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    mod = _module(model, layer)
    captured = {}
    probe = {}

    def hook(_m, _inp, out):
        captured["X"] = out
        z = probe.get("z")
        return out + z if z is not None else out

    handle = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = first_tensor(model(*inputs))
        X = captured["X"].detach()
        if fisher == "true":
            targets = _sample_labels(out, likelihood, torch.Generator().manual_seed(seed))
        if targets is None:
            raise ValueError("the empirical Fisher needs targets (observed labels)")

        def loss_one(z, *xy):
            *xs, y = xy
            probe["z"] = z
            try:
                o = first_tensor(model(*[x.unsqueeze(0) for x in xs]))
            finally:
                probe.pop("z", None)
            return _per_token_loss(o, y.unsqueeze(0), likelihood)

        deltas = vmap(grad(loss_one), in_dims=(None,) + (0,) * (len(inputs) + 1))(
            torch.zeros_like(X[0:1]), *inputs, targets)
    finally:
        handle.remove()
    width = X.shape[-1]
    Xm = X.reshape(-1, width).to(torch.float64)
    D = deltas.detach().reshape(-1, width).to(torch.float64)
    N = Xm.shape[0]
    sv = torch.linalg.svdvals(Xm)
    G = D.T @ D / N
    ev = torch.linalg.eigvalsh(G).flip(0).clamp_min(0)
    cutoff = rel_cutoff * float(ev[0]) if float(ev[0]) > 0 else 0.0
    active = ev > cutoff
    return LayerReadings(layer, float(sv[-1]), sv.numpy(), ev.numpy(),
                         float(ev[active][-1]) if bool(active.any()) else 0.0,
                         float(torch.log(ev[active]).sum()), int(active.sum()), int((~active).sum()), cutoff, N)


@dataclasses.dataclass
class TrajectoryReadings:
    """Layer readings at a sequence of checkpoints and their log–log slopes against the approach parameter t."""

    ts: list[float]
    readings: list[LayerReadings]
    slopes: dict[str, tuple[float, float]]      # name -> (slope, R²): sigma2_min, lambda_min_plus, logdet_plus


def readings_along(model, checkpoints, inputs, targets, layer: str, ts=None, **kw) -> TrajectoryReadings:
    """:func:`layer_readings` at each checkpoint (a state dict or a path to one saved with ``torch.save``), and
    the slopes of σ²_min, λ⁺_min and log det⁺ against ``ts`` (the approach parameter of each checkpoint: a distance
    to the singular point, or steps to go; default 1, 2, ...). ``model`` supplies the architecture and is not
    changed."""

    checkpoints = list(checkpoints)
    if len(checkpoints) < 2:
        raise ValueError("readings along checkpoints need at least two checkpoints")
    ts = [float(i + 1) for i in range(len(checkpoints))] if ts is None else [float(t) for t in ts]
    if len(ts) != len(checkpoints) or min(ts) <= 0:
        raise ValueError("ts must hold one positive approach parameter per checkpoint")
    work = copy.deepcopy(model)
    readings = []
    for ck in checkpoints:
        state = torch.load(ck, map_location="cpu", weights_only=True) if not isinstance(ck, dict) else ck
        try:
            work.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"checkpoint {ck if not isinstance(ck, dict) else '(state dict)'} does not fit the "
                             f"model: {exc}") from exc
        readings.append(layer_readings(work, inputs, targets, layer, **kw))
    slopes = {
        "sigma2_min": loglog_slope(ts, [max(r.sigma_min, 1e-300) ** 2 for r in readings]),
        "lambda_min_plus": loglog_slope(ts, [max(r.lambda_min_plus, 1e-300) for r in readings]),
        "logdet_plus": loglog_slope(ts, [r.logdet_plus for r in readings], log_values=True),
    }
    return TrajectoryReadings(ts, readings, slopes)


# ---------------------------------------------------------------------------------------------------------------
# directional order


def loglog_slope(ts, values, log_values: bool = False) -> tuple[float, float]:
    """Least-squares slope of log(values) (or of ``values`` when they are logs already, e.g. log det⁺) against
    log(ts), and the fit's R²."""
    lt = np.log(np.asarray(ts, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    lv = v if log_values else np.log(np.maximum(v, 1e-300))
    slope, icpt = np.polyfit(lt, lv, 1)
    resid = lv - (slope * lt + icpt)
    r2 = 1.0 - float((resid ** 2).sum() / max(((lv - lv.mean()) ** 2).sum(), 1e-300))
    return float(slope), r2


def _directional_fisher(model, info, theta: torch.Tensor, u: torch.Tensor, inputs, likelihood) -> float:
    """uᵀF(θ)u: the Fisher of the model's predictive distribution along u (exact, by a forward-mode derivative)."""

    def f(vec):
        return first_tensor(functional_call(model, unflatten_params(info, vec), inputs)).to(torch.float64)

    # the composite (math) attention kernel has forward-mode derivatives; the fused CPU kernel has none
    with sdpa_kernel([SDPBackend.MATH]):
        out, dout = jvp(f, (theta,), (u,))
    if likelihood == "gaussian":
        return float((dout ** 2).sum() / out.shape[0])
    p = torch.softmax(out, -1)
    # Fisher of a categorical in logit space, diag(p) - p pᵀ, in the centred form (no cancellation: a shift of all
    # logits reads exactly zero)
    val = (p * (dout - (p * dout).sum(-1, keepdim=True)) ** 2).sum(-1)
    return float(val.sum() / out.shape[0])


def directional_order(model, inputs, direction, approach=None, likelihood: str = "categorical", ts=None,
                      gauge_tol: float = 1e-20, direction_at=None) -> DirectionalReading:
    """Read uᵀF(θ + t·a)u over t (u = direction, a = approach, default u) and its log-log slope.

    θ is the model's current parameters. A direction is *gauge* when the Fisher along it is at rounding level
    (relative to the Fisher of a random direction, below ``gauge_tol``) along the whole approach.
    ``direction_at(θ')``, when given, supplies the direction to read at each point of the approach: a generator
    of a group action moves with the point (the orbit direction at (I + tA)θ is A(I + tA)θ, not Aθ)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    info, params = _params(model)
    theta = _flat(info, params).to(torch.float64)
    model64 = copy.deepcopy(model).to(torch.float64)     # never change the caller's model
    inputs = tuple(x.to(torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                   for x in inputs)
    u = torch.as_tensor(direction, dtype=torch.float64).reshape(-1)
    if u.numel() != theta.numel():
        raise ValueError(f"direction has {u.numel()} entries, the model has {theta.numel()} parameters")
    if not bool(torch.isfinite(u).all()) or float(u.norm()) == 0.0:
        raise ValueError("direction is zero or holds NaN/inf: there is no direction to read")
    u = u / u.norm()
    a = u if approach is None else torch.as_tensor(approach, dtype=torch.float64).reshape(-1)
    ts = np.logspace(-3, -1, 9) if ts is None else np.asarray(ts, dtype=np.float64)
    F = []
    for t in ts:
        point = theta + float(t) * a
        ut = u if direction_at is None else direction_at(point)
        F.append(_directional_fisher(model64, info, point, ut / ut.norm(), inputs, likelihood))
    F = np.array(F)
    rnd = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = max(_directional_fisher(model64, info, theta + float(ts[-1]) * a, rnd / rnd.norm(), inputs, likelihood),
              1e-300)
    if np.all(np.abs(F) <= gauge_tol * ref):
        return DirectionalReading(math.inf, 0.0, "gauge", math.nan, math.nan, ts, F)
    slope, r2 = loglog_slope(ts, F)
    k = 1.0 + slope / 2.0
    kind = "regular" if k < 1.5 else "singular"
    return DirectionalReading(float(k), float(1.0 / (2.0 * k)), kind, float(slope), r2, ts, F)


def classify(model, inputs, directions, plan=None, **kw) -> list[dict]:
    """Read each direction as gauge / singular / regular. With a plan, a direction in the span of the plan's
    generators (``in_plan``) is read as that combination of generators, re-evaluated along the approach."""
    B = plan.tangent_basis() if plan is not None else None
    info, _ = _params(model)
    out = []
    for d in directions:
        v = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
        row = {"in_plan": False}
        transport = None
        if B is not None and B.shape[0]:
            c = torch.linalg.lstsq(B.T, v.unsqueeze(1)).solution.squeeze(1)
            row["in_plan"] = float((B.T @ c - v).norm()) < 1e-8 * float(v.norm())
            if row["in_plan"]:
                def transport(point, c=c):
                    return plan.tangent_basis(unflatten_params(info, point)).T @ c
        r = directional_order(model, inputs, v, direction_at=transport, **kw)
        row.update(reading=r, kind=r.kind)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# conservation laws


def charges(plan, params: dict | None = None, kinds=("mult", "add")) -> torch.Tensor:
    """Q_b(θ) = ½ θ·ξ_b(θ) for multiplicative generators, ⟨ξ_b, θ⟩ for translations (one per tangent row), for the
    gauges whose kind is in ``kinds``."""
    info, cur = _params(plan.model)
    theta = _flat(info, cur if params is None else params).to(torch.float64)
    rows = []
    for g in (g for g in plan.gauges if g.kind in kinds):
        T = plan.gauge_tangents(g)
        rows.append(0.5 * T @ theta if g.kind == "mult" else T @ theta)
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)


def generator_matrices(plan, gauge) -> list[torch.Tensor]:
    """For a multiplicative gauge, the matrices A_b with ξ_b(θ) = A_b θ (the action is linear in θ)."""
    info, _ = _params(plan.model)
    n = sum(int(np.prod(i.shape, dtype=np.int64)) for i in info.values())
    E = torch.eye(n, dtype=torch.float64)
    cols = [plan.gauge_tangents(gauge, unflatten_params(info, E[j])) for j in range(n)]
    T = torch.stack(cols, dim=-1)     # [dim, n, n]: T[b, :, j] = A_b e_j
    return list(T)


def predicted_sgd_drift(A: torch.Tensor, g: torch.Tensor, lr: float) -> float:
    """The exact change of ½θᵀAθ under θ <- θ - lr g when g ⊥ Aθ (a gradient of an invariant loss): ½ lr² gᵀAg."""
    return float(0.5 * lr ** 2 * (g @ (A @ g)))


# ---------------------------------------------------------------------------------------------------------------
# the dead directions of a layer's parameters


def layer_parameter_fisher(model, inputs, layer: str, likelihood: str = "categorical", seed: int = 0):
    """The true Fisher (labels drawn from the model) of the parameters of submodule ``layer``, from per-sample
    gradients: (names, eigenvalues ascending, eigenvectors as columns, flat offsets of the layer's parameters)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    info, params = _params(model)
    prefix = layer + "."
    names = [k for k in info if k.startswith(prefix) or (layer == "" and "." not in k)]
    if not names:
        raise KeyError(f"submodule {layer!r} has no parameters of its own")
    with torch.no_grad():
        out = first_tensor(model(*inputs))
    labels = _sample_labels(out, likelihood, torch.Generator().manual_seed(seed))
    fixed = {k: v for k, v in params.items() if k not in names}

    def loss_one(sub, *xy):
        *xs, y = xy
        o = first_tensor(functional_call(model, {**fixed, **sub}, tuple(x.unsqueeze(0) for x in xs)))
        return _per_token_loss(o, y.unsqueeze(0), likelihood)

    grads = vmap(grad(loss_one), in_dims=(None,) + (0,) * (len(inputs) + 1))(
        {k: params[k] for k in names}, *inputs, labels)
    Gs = torch.cat([grads[k].detach().reshape(grads[k].shape[0], -1) for k in names], 1).to(torch.float64)
    F = Gs.T @ Gs / Gs.shape[0]
    evals, evecs = torch.linalg.eigh(F)
    offsets, total = param_offsets(info)
    return names, evals, evecs, offsets, total


class ChargeMonitor:
    """Tracks the conserved charges of a plan during training (call :meth:`record` after each step).

    Gradient flow keeps every charge constant. A plain SGD step θ − ηg changes ½θᵀAθ by exactly ½η²gᵀAg. Under
    decoupled weight decay λ (dθ/dt = −∇L − λθ), Q̇ = −2λQ, so Q(t) = Q(0) e^{−2λt}, t the integrated learning rate.
    """

    def __init__(self, plan):
        self.plan = plan
        self.history: list[torch.Tensor] = []
        self.steps: list[int] = []

    def record(self, step: int | None = None) -> torch.Tensor:
        q = charges(self.plan)
        self.history.append(q)
        self.steps.append(len(self.steps) if step is None else step)
        return q

    def drift(self) -> torch.Tensor:
        """Change of every charge since the first record, relative to its scale (max |Q| at the start, or 1)."""
        if not self.history:
            return torch.zeros(0, dtype=torch.float64)
        q0 = self.history[0]
        scale = q0.abs().max().clamp_min(1.0)
        return (self.history[-1] - q0) / scale

    @staticmethod
    def predicted_decay(q0: torch.Tensor, weight_decay: float, time: float) -> torch.Tensor:
        """Q(t) = Q(0) e^{−2λt} under gradient flow with uniform (decoupled) weight decay λ."""
        return q0 * math.exp(-2.0 * weight_decay * time)
