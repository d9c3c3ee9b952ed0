"""The Jacobian oracle: ground truth for soundness and completeness (design section 5).

At a generic θ every symmetry generator ξ lies in the null space of J = ∂f(θ, x_i)/∂θ stacked over enough inputs,
and for analytic networks the null space is spanned by symmetry generators. The oracle:

* re-initialises a float64 copy of the model at a generic point (fan-in scaled weights, gains near 1, nonzero
  biases), draws random inputs covering every token and position until J has ``row_factor`` x more rows than θ
  has entries, then 1.5 x more at a time until the nullity stops falling (``max_batches`` bounds it),
* accumulates G = JᵀJ and reads its eigenvalues: the nullity counts those below ``rel_tol`` x the largest,
  and the gap between the last null and the first non-null eigenvalue is reported,
* checks every found generator: ‖Jξ‖ / (‖J‖ ‖ξ‖) at rounding level (soundness),
* removes the span of the found generators from the null space; what is left is missed, attributed per module by
  the squared mass of an orthonormal basis of the missed space on that module's parameters.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch.func import functional_call, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel

from gaugec.capture import dense_experts, unflatten_params, unique_named_parameters
from gaugec.functional import Float64Mode, f_value, float64_twin
from gaugec.pipeline import compile as gaugec_compile
from gaugec.progress import Progress


@dataclasses.dataclass
class ModuleRow:
    module: str
    n_params: int
    oracle: float
    found: float
    missed: float


@dataclasses.dataclass
class OracleReport:
    n_params: int
    n_rows: int
    nullity: int
    found_rank: int
    missed: int
    gap: float
    eigenvalues: np.ndarray
    soundness: dict[str, float]        # gauge name -> max ‖Jξ‖/(‖J‖‖ξ‖) over its generators
    modules: list[ModuleRow]
    threshold: float
    # an orthonormal basis [n, missed] of the oracle's null directions that no found generator spans, over the
    # parameters in ``param_names`` order (flattened); empty for a soundness-only report
    missed_basis: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, 0), repr=False)
    param_names: list[str] = dataclasses.field(default_factory=list, repr=False)
    param_sizes: list[int] = dataclasses.field(default_factory=list, repr=False)
    # dead coordinates: parameter entries f never reads at the sampled inputs (a position row beyond the sequence,
    # a padding row), each a null direction of its own and no gauge; dead_missed: the missed dimensions they span
    dead: int = 0
    dead_missed: int = 0

    def missed_directions(self, k: int = 0) -> dict[str, torch.Tensor]:
        """The k-th missed direction split by parameter (entries below 1e-8 of its peak zeroed): what to read
        when a gauge is missing."""
        v = self.missed_basis[:, k]
        out, o = {}, 0
        for name, sz in zip(self.param_names, self.param_sizes):
            part = v[o:o + sz]
            if float(part.abs().max()) > 1e-8 * float(v.abs().max()):
                out[name] = part
            o += sz
        return out

    @property
    def sound(self) -> bool:
        return all(v <= 1e-8 for v in self.soundness.values())

    @property
    def complete(self) -> bool:
        return self.missed == 0

    def __str__(self) -> str:
        lines = [
            f"oracle: {self.n_params} parameters, {self.n_rows} Jacobian rows (float64)",
            f"  nullity {self.nullity} (eigenvalues of JᵀJ below {self.threshold:.1e} x max; gap {self.gap:.1e})",
            f"  found {self.found_rank}, missed {self.missed}"
            + (f" ({self.dead_missed} of them dead coordinates: entries f never reads)" if self.dead_missed else ""),
            "",
            f"  {'module':<32} {'params':>7} {'oracle':>8} {'found':>8} {'missed':>8}",
        ]
        for r in self.modules:
            lines.append(f"  {r.module:<32} {r.n_params:>7} {r.oracle:>8.2f} {r.found:>8.2f} {r.missed:>8.2f}")
        if self.soundness:
            lines += ["", f"  {'gauge':<44} {'soundness ‖Jξ‖/(‖J‖‖ξ‖)':>26}"]
            for k, v in self.soundness.items():
                flag = "" if v <= 1e-8 else "   UNSOUND"
                lines.append(f"  {k:<44} {v:>26.1e}{flag}")
        return "\n".join(lines)


def generic_init_(model: torch.nn.Module, seed: int = 0):
    """Fan-in scaled weights, gains near 1, nonzero biases: a point where no accidental structure hides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in))
            else:
                looks_like_gain = bool(p.detach().abs().mean() > 0.5)
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3
                p.copy_(1.0 + noise if looks_like_gain else noise)


def input_vocabularies(model, example_inputs: tuple) -> dict[int, tuple[int, set]]:
    """For each integer input: (the size of the smallest embedding table it is looked up in, their padding rows),
    found by one forward pass with hooks on every ``nn.Embedding`` or look-alike (a table whose lookup equals that input; when none
    does, the largest table). A position table longer than the vocabulary is not the vocabulary: ids drawn below it
    would index past the token table."""
    # nn.Embedding and its look-alikes (I-BERT's QuantEmbedding): a 2-D weight looked up with a padding_idx, whose
    # row gets no gradient from autograd although the forward reads it, so J would disagree with f on it
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) or (
        hasattr(m, "padding_idx") and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2)]
    ints = {i: x for i, x in enumerate(example_inputs) if isinstance(x, torch.Tensor) and not x.is_floating_point()
            and x.dtype != torch.bool}
    if not tables or not ints:
        return {}
    seen: dict[int, list] = {}

    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            for i, x in ints.items():
                if args[0].shape == x.shape and torch.equal(args[0].to(x.device), x):
                    seen.setdefault(i, []).append(module)

    handles = [m.register_forward_pre_hook(hook) for m in tables]
    try:
        with torch.no_grad(), dense_experts(model):
            model(*example_inputs)
    except Exception:  # noqa: BLE001 - a model that cannot run here: fall back to every table (below)
        seen = {}
    finally:
        for h in handles:
            h.remove()
    out = {}
    for i in ints:       # no table takes the input as it is (ids offset first): every table, the largest
        mods = seen.get(i)
        size = min(m.weight.shape[0] for m in mods) if mods else max(m.weight.shape[0] for m in tables)
        out[i] = (size, {m.padding_idx for m in (mods or tables) if m.padding_idx is not None})
    return out


def sample_inputs(model, example_inputs: tuple, gen: torch.Generator, batch_mult: int = 1,
                  vocab: dict | None = None) -> tuple:
    """Random inputs shaped like the examples (leading axis x batch_mult): token ids over the vocabulary of the table
    they are looked up in (``vocab``: :func:`input_vocabularies`, computed here when None) but its ``padding_idx``
    (autograd gives that row no gradient although the forward reads it, so J would disagree with f there), floats
    from N(0, 1)."""
    vocab = input_vocabularies(model, example_inputs) if vocab is None else vocab
    out = []
    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor) and x.ndim >= 1 and batch_mult > 1:
            x = x.repeat(batch_mult, *([1] * (x.ndim - 1)))
        if not isinstance(x, torch.Tensor):
            out.append(x)
        elif x.is_floating_point():
            out.append(torch.randn(x.shape, generator=gen, dtype=torch.float64))
        elif x.dtype == torch.bool or (i > 0 and x.numel() and bool(((x == 0) | (x == 1)).all())):
            out.append(x.clone())   # masks stay as they are
        else:
            hi, pads = vocab.get(i, (int(x.max()) + 1, set()))
            allowed = torch.tensor([t for t in range(hi) if t not in pads])
            out.append(allowed[torch.randint(0, len(allowed), x.shape, generator=gen)])
    return tuple(out)


def _soundness(plan, B, JB2, lam_max) -> dict[str, float]:
    """max over each gauge's generators of ‖Jξ‖ / (‖J‖ ‖ξ‖), ‖J‖ the spectral norm."""
    out = {}
    jnorm = math.sqrt(lam_max)
    o = 0
    for g in plan.gauges:
        norms = B[o:o + g.dim].norm(dim=1)
        ratios = JB2[o:o + g.dim].sqrt() / (jnorm * norms.clamp_min(1e-300))
        out[g.name] = float(ratios[norms > 0].max()) if bool((norms > 0).any()) else 0.0
        o += g.dim
    return out


def _soundness_without_jacobian(bound, f_of, theta, batches, seed: int, iterations: int = 30):
    """Per gauge, ‖Jξ‖ / (‖J‖ ‖ξ‖) with J never formed (any size): ‖J‖² by power iteration on JᵀJ (a jvp and a vjp
    per batch and step; the largest ‖Jv‖² over unit v, a lower bound that converges to it, so a ratio is never
    understated), and ξ = Bᵀc one random combination of the gauge's generators (the tangent operator), Jξ by one jvp
    per batch. A generator outside null J makes a random combination's ratio non-zero with probability 1."""
    with sdpa_kernel(SDPBackend.MATH):      # the fused attention kernels have no forward-mode AD on CPU
        return _soundness_matrix_free(bound, f_of, theta, batches, seed, iterations)


def _soundness_matrix_free(bound, f_of, theta, batches, seed, iterations):
    fns = [lambda t, x=x: f_of(t, x) for x in batches]
    pullbacks, rows = [], 0
    for fn in fns:
        out, pull = torch.func.vjp(fn, theta)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError("f is not finite at the oracle's point (a norm with eps = 0 on a zero vector, "
                                     "or an overflow)")
        pullbacks.append(pull)
        rows += out.numel()

    def J(v):
        return [torch.func.jvp(fn, (theta,), (v,))[1] for fn in fns]

    def sq_norm(parts):
        return sum(float((u ** 2).sum()) for u in parts)

    gen = torch.Generator().manual_seed(seed + 2)
    v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
    v /= v.norm()
    lam = 0.0
    for _ in range(iterations):
        jv = J(v)
        lam = max(lam, sq_norm(jv))
        w = sum(pull(u)[0] for pull, u in zip(pullbacks, jv))
        if float(w.norm()) == 0:
            break
        v = w / w.norm()
    jnorm = math.sqrt(max(lam, 1e-300))
    op = bound.tangent_operator()
    out = {}
    for g, sl in zip(bound.gauges, op.slices):
        c = torch.zeros(op.shape[0], dtype=torch.float64)
        c[sl] = torch.randn(sl.stop - sl.start, generator=gen, dtype=torch.float64)
        xi = op.matvec(c)
        nx = float(xi.norm())
        if not math.isfinite(nx):
            raise FloatingPointError(f"a generator of {g.name} is not finite at the oracle's point")
        out[g.name] = math.sqrt(sq_norm(J(xi))) / (jnorm * nx) if nx > 0 else 0.0
    return out, rows


def orthonormal_columns(A: torch.Tensor, rtol: float | None = None, atol: float | None = None) -> torch.Tensor:
    """An orthonormal basis of A's column space, from the eigendecomposition of AᵀA (robust where the SVD of a
    matrix with many repeated singular values may fail to converge). Singular values below atol, or below
    rtol x the largest, are dropped."""
    if A.shape[1] == 0:
        return A[:, :0]
    evals, V = torch.linalg.eigh(A.T @ A)
    s = evals.clamp_min(0).sqrt()
    cut = (atol if atol is not None else 0.0) + (rtol * float(s.max()) if rtol is not None else 0.0)
    keep = s > cut
    U = (A @ V[:, keep]) / s[keep]
    # one re-orthonormalisation pass removes the squared-condition error of the Gram route
    Qr, _ = torch.linalg.qr(U)
    return Qr


def _module_rows(names, sizes, N, Q, Umiss) -> list[ModuleRow]:
    """Per module, the squared mass of the null space (N), the found span (Q) and the missed space (Umiss) on its
    parameters (orthonormal bases, so the masses add up to the dimensions)."""
    by_module: dict[str, list[int]] = {}
    o = 0
    for k, sz in zip(names, sizes):
        mod = k.rsplit(".", 1)[0] if "." in k else "(root)"
        by_module.setdefault(mod, []).extend(range(o, o + sz))
        o += sz
    rows = []
    for mod, idx in by_module.items():
        ii = torch.tensor(idx)
        rows.append(ModuleRow(mod, len(idx), float((N[ii] ** 2).sum()), float((Q[ii] ** 2).sum()),
                              float((Umiss[ii] ** 2).sum())))
    return rows


def verify(model, example_inputs, plan=None, loss: str | None = "cross_entropy", seed: int = 0,
           rel_tol: float = 1e-10, row_factor: float = 4.0, max_batches: int = 64,
           soundness_only: bool = False) -> OracleReport:
    """Run the oracle on ``model``; compare with ``plan`` (compiled here when None).

    ``soundness_only``: check ‖Jξ‖/(‖J‖‖ξ‖) on two batches and skip the nullity (a true generator is in the
    null space of any rows of J, so soundness needs no full-rank Jacobian), matrix-free (jvp / vjp and the plan's
    tangent operator: any size). The report then has nullity -1, and each gauge's figure is for one random
    combination of its generators.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    if plan is None:
        plan = gaugec_compile(model, example_inputs, loss=loss)
    loss = plan.loss
    model64, _ = float64_twin(model)
    model64.eval()
    generic_init_(model64, seed)
    bound = plan.bind(model64)

    info = unique_named_parameters(model64)
    names = list(info)
    sizes = [int(np.prod(info[k].shape, dtype=np.int64)) for k in names]
    n = sum(sizes)
    named = dict(model64.named_parameters(remove_duplicate=False))
    theta = torch.cat([named[k].detach().reshape(-1) for k in names])

    def f_of(flat, inputs):
        with Float64Mode(), dense_experts(model64):
            out = f_value(functional_call(model64, unflatten_params(info, flat), inputs), loss, plan.f_leaves)
        return out.reshape(-1)

    gen = torch.Generator().manual_seed(seed + 1)
    vocab = input_vocabularies(model64, example_inputs)
    if soundness_only:
        batches = [sample_inputs(model64, example_inputs, gen, 1, vocab=vocab) for _ in range(2)]
        soundness, rows = _soundness_without_jacobian(bound, f_of, theta, batches, seed)
        return OracleReport(n, rows, -1, bound.dim, -1, float("nan"), np.zeros(0), soundness, [], rel_tol)
    B = bound.tangent_basis() if bound.gauges else torch.zeros(0, n, dtype=torch.float64)
    G = torch.zeros(n, n, dtype=torch.float64)
    JB2 = torch.zeros(B.shape[0], dtype=torch.float64)   # ‖J ξ‖² per generator, accumulated exactly
    rows = 0
    batches = 0
    per_example = f_of(theta, sample_inputs(model64, example_inputs, gen, vocab=vocab)).numel()
    batch_mult = max(1, math.ceil(row_factor * n / max(per_example, 1) / 8))
    target, counted = row_factor * n, None
    with Progress(f"oracle ({n} parameters)") as bar:
        while batches < max_batches:
            while rows < target and batches < max_batches:
                inputs = sample_inputs(model64, example_inputs, gen, batch_mult, vocab=vocab)
                J = jacrev(f_of)(theta, inputs)
                if not bool(torch.isfinite(J).all()):
                    raise FloatingPointError("the Jacobian has non-finite entries at the oracle's point (a norm "
                                             "with eps = 0 on a zero vector, or an overflow)")
                G += J.T @ J
                JB2 += ((J @ B.T) ** 2).sum(0)
                rows += J.shape[0]
                batches += 1
                bar.update(1, f"Jacobian rows {rows}/{int(target)}")
            # rows are added until the nullity stops falling: a piecewise-linear net (ReLU, max-pool) with few
            # outputs per example needs many more rows than parameters before J shows its rank (a small convnet: 47
            # at 4 n rows, 25 from 16 n)
            bar.stage(f"eigenvalues of a {n} x {n} Gram")
            ev = torch.linalg.eigvalsh(G)
            nullity_now = int((ev < rel_tol * ev[-1].clamp_min(1e-300)).sum())
            if nullity_now == counted:
                break
            counted, target = nullity_now, rows * 1.5
        bar.stage(f"eigenvectors of a {n} x {n} Gram")
        evals, evecs = torch.linalg.eigh(G)
    lam_max = float(evals[-1].clamp_min(1e-300))
    thr = rel_tol * lam_max
    null_mask = evals < thr
    nullity = int(null_mask.sum())
    below = evals[null_mask]
    above = evals[~null_mask]
    gap = float(above[0] / below[-1].clamp_min(1e-300)) if len(below) and len(above) else float("inf")
    N = evecs[:, null_mask]                         # [n, nullity]

    soundness = _soundness(bound, B, JB2, lam_max)
    if not bool(torch.isfinite(B).all()):
        raise FloatingPointError("a generator of the plan is not finite at the oracle's point")
    # generators scaled to unit norm (a GL block of big weights and a scalar gain differ by orders), and a cut well
    # above the Gram route's floor (sqrt(eps) of the largest singular value): an exact dependency between gauges
    # must not count as a found dimension
    Bn = B / B.norm(dim=1, keepdim=True).clamp_min(1e-300)
    Q = orthonormal_columns(Bn.T, rtol=1e-6)
    r = Q.shape[1]
    M = N - Q @ (Q.T @ N)
    Umiss = orthonormal_columns(M, atol=1e-6)
    missed = Umiss.shape[1]
    dead_idx = torch.nonzero(torch.diagonal(G) == 0).reshape(-1)
    D = torch.zeros(n, len(dead_idx), dtype=torch.float64)
    D[dead_idx, torch.arange(len(dead_idx))] = 1.0
    dead_missed = orthonormal_columns(D - Q @ (Q.T @ D), atol=1e-6).shape[1] if len(dead_idx) else 0

    return OracleReport(n, rows, nullity, r, missed, gap, evals.numpy(), soundness,
                        _module_rows(names, sizes, N, Q, Umiss), rel_tol,
                        missed_basis=Umiss, param_names=names, param_sizes=sizes, dead=len(dead_idx),
                        dead_missed=dead_missed)
