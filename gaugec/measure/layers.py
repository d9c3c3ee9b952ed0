"""Spectra at one layer (activations and the Fisher Gram of the per-sample output gradients), and along a
trajectory of checkpoints."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from gaugec.capture import param_offsets
from gaugec.functional import first_tensor
from gaugec.measure.common import params_of, submodule, per_token_loss, sample_labels, infer_likelihood


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
    mod = submodule(model, layer)
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
            targets = sample_labels(out, likelihood, torch.Generator().manual_seed(seed))
        if targets is None:
            raise ValueError("the empirical Fisher needs targets (observed labels)")

        def loss_one(z, *xy):
            *xs, y = xy
            probe["z"] = z
            try:
                o = first_tensor(model(*[x.unsqueeze(0) for x in xs]))
            finally:
                probe.pop("z", None)
            return per_token_loss(o, y.unsqueeze(0), likelihood)

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


def layer_parameter_fisher(model, inputs, layer: str, likelihood: str = "categorical", seed: int = 0):
    """The true Fisher (labels drawn from the model) of the parameters of submodule ``layer``, from per-sample
    gradients: (names, eigenvalues ascending, eigenvectors as columns, flat offsets of the layer's parameters)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    info, params = params_of(model)
    prefix = layer + "."
    names = [k for k in info if k.startswith(prefix) or (layer == "" and "." not in k)]
    if not names:
        raise KeyError(f"submodule {layer!r} has no parameters of its own")
    with torch.no_grad():
        out = first_tensor(model(*inputs))
    labels = sample_labels(out, likelihood, torch.Generator().manual_seed(seed))
    fixed = {k: v for k, v in params.items() if k not in names}

    def loss_one(sub, *xy):
        *xs, y = xy
        o = first_tensor(functional_call(model, {**fixed, **sub}, tuple(x.unsqueeze(0) for x in xs)))
        return per_token_loss(o, y.unsqueeze(0), likelihood)

    grads = vmap(grad(loss_one), in_dims=(None,) + (0,) * (len(inputs) + 1))(
        {k: params[k] for k in names}, *inputs, labels)
    Gs = torch.cat([grads[k].detach().reshape(grads[k].shape[0], -1) for k in names], 1).to(torch.float64)
    F = Gs.T @ Gs / Gs.shape[0]
    evals, evecs = torch.linalg.eigh(F)
    offsets, total = param_offsets(info)
    return names, evals, evecs, offsets, total
