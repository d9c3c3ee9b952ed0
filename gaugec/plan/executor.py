"""The plan compiled into batched executors: a canonical section of every gauge orbit.

For a multiplicative block with group GL(m) (or a subgroup) acting on rows by A ("direct" rows X) and by A^-T
("dual" rows Y), the Kempf–Ness section is the minimum-norm point of the orbit:

    min_A  ‖A X‖² + ‖A^-T Y‖²,    P = Σ X Xᵀ,  Q = Σ Y Yᵀ
    gl:     AᵀA = S,  S P S = Q  ⇒  S = P^-½ (P^½ Q P^½)^½ P^-½   (the matrix geometric mean of P⁻¹ and Q)
    rot2:   A = s R,  s⁴ = tr Q / tr P                            (R+ × SO(2): only the scale is non-compact)
    scalar, pos:  c⁴ = Q / P

At the minimum, A P Aᵀ = A^-T Q A^-1 (balanced). The minimiser is unique up to the block's compact part (O(m), SO(2),
±1), which is fixed by conventions that are themselves equivariant: the balanced Gram is diagonal with decreasing
entries (gl, rot2), and every row has a positive projection ⟨row, r⟩ on a fixed probe vector (gl rows, the rot2
principal row, scalar), summed over the legs no other gauge moves. m = 1 blocks skip the gather: row norms and
projections are reductions and the action is one broadcast multiply per leg.
Coupled gauges (a norm gain acting on the columns of W_up whose rows a SwiGLU rescale moves) are balanced by
block Gauss–Seidel over a colouring of the gauges: gauges of one colour share no parameter, and all blocks of one
colour and one (kind, size) are solved in one batched call. The norm ‖g·θ‖² is geodesically convex on the
non-compact part, so the sweeps converge to the joint minimum-norm point.

An additive gauge (θ ↦ θ + V t) uses the linear section {the seed coordinates have zero mean over the broadcast
axes} (zero, for an unbroadcast seed such as a key bias): it is reached once, with the absorbing biases compensated
through the graph, and kept afterwards by projecting every update (subtracting that mean), which never reads V.
The additive sections are invariant under the multiplicative gauges of the zoo's models (a column scaling keeps a
zero column mean at zero); tests/test_optim.py checks this on each model family.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import networkx as nx
import numpy as np
import torch

from gaugec.plan import Gauge, PlanMismatchError, _groups

REGULARISER = 1e-13       # relative ridge on P and Q: keeps a zero-initialised block finite


@dataclasses.dataclass
class RowGroup:
    """Rows of one parameter that one leg moves, for several blocks of one stage at once."""

    param: str
    axis: int
    rows: torch.Tensor        # [n, m] positions along ``axis``, ordered by the block's local index
    blocks: torch.Tensor      # [n] block index within the stage
    dual: bool                # moved by A^-T (a column leg, or a contraction's dual side)
    offset: float = 0.0       # gains g <- c (g + offset) - offset act linearly on g + offset
    orient: bool = True       # its row sums fix the block's signs (see _compile_stages)


@dataclasses.dataclass
class Stage:
    """All blocks of one colour with one (kind, size): one batched solve."""

    kind: str
    m: int
    n_blocks: int
    groups: list[RowGroup]


@dataclasses.dataclass
class SeedLeg:
    """A translation seed: its mean over ``axes`` (restricted to ``mask``) is the vertical coordinate."""

    param: str
    axes: tuple
    mask: torch.Tensor | None   # 1 where the translation moves the entry (shape of the mean), None: all


def _dual(role: str, parity: int) -> bool:
    if role == "in":
        return not parity
    return bool(parity)       # out, gain


class OrbitExecutor:
    """Canonical sections of a plan's gauges, batched per colour and block shape.

    ``canonicalise(params)`` moves parameters to the joint section (run once, to convergence);
    ``project_translations(params)`` and ``rebalance(params, sweeps)`` keep them there after an update.
    """

    def __init__(self, plan, owned: set[str] | None = None):
        self.plan = plan
        self.skipped: list[tuple[str, str]] = []
        mult, add = [], []
        for g in plan.gauges:
            reason = self._unsupported(g, owned)
            if reason:
                self.skipped.append((g.name, reason))
                continue
            (mult if g.kind == "mult" else add).append(g)
        for name, reason in self.skipped:
            warnings.warn(f"gaugec: gauge {name} is left out of the canonical frame: {reason}", stacklevel=3)
        self.mult_gauges, self.add_gauges = mult, add
        self.stages = self._compile_stages(mult)
        self.seeds = [self._seed_legs(g) for g in add]

    # -- compilation -----------------------------------------------------------------------------------------------
    @staticmethod
    def _unsupported(g: Gauge, owned) -> str:
        if owned is not None:
            missing = [p for p in g.params if p not in owned]
            if missing:
                return f"it moves {missing[0]!r}, which this optimizer does not own"
        if g.kind == "mult":
            axes: dict[str, set] = {}
            for lg in g.legs:
                axes.setdefault(lg.param, set()).add(lg.axis)
                if lg.role == "gain" and any(m > 1 for _, m in g.blocks):
                    return "a gain leg on a block larger than 1"
            if any(len(a) > 1 for a in axes.values()):
                return "it acts on two axes of one parameter (a self-contraction)"
        return ""

    def _compile_stages(self, gauges: list[Gauge]) -> list[Stage]:
        conflicts = nx.Graph()
        conflicts.add_nodes_from(range(len(gauges)))
        by_param: dict[str, list[int]] = {}
        for i, g in enumerate(gauges):
            for p in g.params:
                by_param.setdefault(p, []).append(i)
        for users in by_param.values():
            conflicts.add_edges_from((a, b) for a in users for b in users if a < b)
        colour = nx.coloring.greedy_color(conflicts, strategy="largest_first")
        # stage key -> block counter and row groups keyed by (param, axis, dual, offset)
        stages: dict[tuple, dict] = {}
        for i, g in enumerate(gauges):
            # Signs are fixed by row projections ⟨row, r⟩ over the legs that no other gauge moves (a gain, W_down's columns,
            # W_o's columns): those projections are invariant under the other families' sign flips, so the conventions
            # do not depend on each other. A gauge without such a leg (Q/K) uses all its legs; the gauges that
            # move its other axis (the norm gains) have exclusive legs, so their signs are settled first.
            exclusive = {p for p in g.params if len(by_param[p]) == 1}
            first_block = {}
            for b, (kind, m) in enumerate(g.blocks):
                st = stages.setdefault((colour[i], kind, m), {"n": 0, "groups": {}})
                first_block[b] = (st, st["n"])
                st["n"] += 1
            for lg in g.legs:
                for b, copies in _groups(lg.entries).items():
                    st, local_block = first_block[b]
                    m = g.blocks[b][1]
                    for pos, loc, parity in copies:
                        if sorted(loc) != list(range(m)):
                            raise PlanMismatchError(f"gauge {g.name}: leg {lg.param} covers part of a block")
                        order = np.argsort(loc)
                        orient = lg.param in exclusive or not exclusive
                        key = (lg.param, lg.axis, _dual(lg.role, parity), lg.offset, orient)
                        rows, blocks = st["groups"].setdefault(key, ([], []))
                        rows.append(np.asarray(pos)[order])
                        blocks.append(local_block)
        out = []
        for (c, kind, m), st in sorted(stages.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
            groups = [RowGroup(p, ax, torch.as_tensor(np.stack(r), dtype=torch.long),
                               torch.as_tensor(bl, dtype=torch.long), dual, off, orient)
                      for (p, ax, dual, off, orient), (r, bl) in st["groups"].items()]
            out.append(Stage(kind, m, st["n"], groups))
        return out

    def _seed_legs(self, g: Gauge) -> list[SeedLeg]:
        info = self.plan._param_info
        legs = []
        for lg in g.legs:
            if lg.role != "shift":
                continue
            shape = tuple(info[lg.param].shape)
            mean_shape = [1 if i in lg.axes else s for i, s in enumerate(shape)]
            mask = None
            if lg.select is not None:
                mask = torch.zeros(int(np.prod(mean_shape, dtype=np.int64)), dtype=torch.float64)
                mask[torch.as_tensor(lg.select)] = 1.0
                mask = mask.reshape(mean_shape)
            legs.append(SeedLeg(lg.param, tuple(lg.axes), mask))
        return legs

    def to(self, device):
        for st in self.stages:
            for rg in st.groups:
                rg.rows, rg.blocks = rg.rows.to(device), rg.blocks.to(device)
        for legs in self.seeds:
            for sl in legs:
                if sl.mask is not None:
                    sl.mask = sl.mask.to(device)
        return self

    # -- translations ----------------------------------------------------------------------------------------------
    @staticmethod
    def _seed_mean(p: torch.Tensor, sl: SeedLeg) -> torch.Tensor:
        mean = p.mean(dim=sl.axes, keepdim=True) if sl.axes else p
        return mean if sl.mask is None else mean * sl.mask.to(p.dtype)

    @torch.no_grad()
    def project_translations(self, params: dict[str, torch.Tensor], skip: torch.Tensor | None = None):
        """Subtract each seed's mean over its broadcast axes: the update's vertical part (V t) never enters.
        ``skip`` (a 0-dim device tensor, 1 = skip) makes it a no-op without a host synchronisation."""
        for legs in self.seeds:
            for sl in legs:
                p = params[sl.param]
                mean = self._seed_mean(p, sl)
                p.sub_(mean if skip is None else mean * (1 - skip).to(p.dtype))

    @torch.no_grad()
    def _canonicalise_translations(self, params) -> float:
        """Move every additive gauge to its section with the absorbers compensated; returns the largest seed mean."""
        worst = 0.0
        for g, legs in zip(self.add_gauges, self.seeds):
            means = [self._seed_mean(params[sl.param], sl) for sl in legs]
            size = max(float(m.abs().max()) for m in means) if means else 0.0
            scale = max(float(params[sl.param].abs().max()) for sl in legs) if legs else 1.0
            worst = max(worst, size / max(scale, 1e-300))
            if size <= 1e-16 * scale:          # at rounding level already (an absorber pass runs the whole graph)
                continue
            vec = []
            for sl, mean in zip(legs, means):
                flat = mean.reshape(-1).to(torch.float64).cpu()
                if sl.mask is not None:
                    flat = flat[sl.mask.reshape(-1).cpu() > 0]
                vec.append(-flat)
            changes = self.plan.additive_changes(g, torch.cat(vec), params)
            for name, d in changes.items():
                params[name].add_(d.to(device=params[name].device, dtype=params[name].dtype))
        return worst

    # -- multiplicative balance ------------------------------------------------------------------------------------
    @staticmethod
    def _rows(p: torch.Tensor, rg: RowGroup, dtype) -> torch.Tensor:
        x = p.movedim(rg.axis, 0)[rg.rows]                   # [n, m, *rest]
        x = x.reshape(x.shape[0], x.shape[1], -1).to(dtype)
        return x + rg.offset if rg.offset else x

    @staticmethod
    def _write(p: torch.Tensor, rg: RowGroup, y: torch.Tensor):
        if rg.offset:
            y = y - rg.offset
        view = p.movedim(rg.axis, 0)
        view[rg.rows] = y.reshape((*rg.rows.shape, *view.shape[1:])).to(p.dtype)

    @torch.no_grad()
    def balance_stage(self, st: Stage, params: dict[str, torch.Tensor], skip: torch.Tensor | None = None,
                      exact: bool = True) -> torch.Tensor:
        """Move the stage's blocks to their minimum-norm point; returns max |A - I| (a device tensor).

        ``exact=False`` is the per-step sweep: it only reduces the non-compact part (no orientation conventions,
        and a first-order step instead of the eigensolver for GL blocks); being a deterministic function of the
        point, it keeps two runs that agree in agreement. ``skip`` (0-dim, 1 = skip) writes the rows back
        unchanged, without a host synchronisation."""
        if st.m == 1:
            return self._balance_diagonal(st, params, skip, exact)
        first = params[st.groups[0].param]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        m, nb = st.m, st.n_blocks
        P = torch.zeros(nb, m, m, dtype=dtype, device=first.device)
        Q = torch.zeros_like(P)
        rows = []
        for rg in st.groups:
            x = self._rows(params[rg.param], rg, dtype)
            rows.append(x)
            (Q if rg.dual else P).index_add_(0, rg.blocks, x @ x.mT)
        A, A_dual = _solve(st.kind, P, Q) if exact else _first_order(st.kind, P, Q)
        if skip is not None:            # the identity maps rows to themselves bit for bit
            eye = torch.eye(A.shape[-1], dtype=dtype, device=first.device).expand_as(A)
            A, A_dual = torch.where(skip.bool(), eye, A), torch.where(skip.bool(), eye, A_dual)
        moved, moment = [], torch.zeros(nb, m, dtype=dtype, device=first.device)
        for rg, x in zip(st.groups, rows):
            y = (A_dual if rg.dual else A)[rg.blocks] @ x
            moved.append(y)
            if rg.orient and exact:
                moment.index_add_(0, rg.blocks, y @ _probe(y.shape[-1], y))
        sign = _orientation(st.kind if exact else "pos", moment)   # [nb, m] of ±1
        for rg, y in zip(st.groups, moved):
            if exact:
                y = y * sign[rg.blocks].unsqueeze(-1)
            self._write(params[rg.param], rg, y)
        eye = torch.eye(m, dtype=dtype, device=first.device)
        return (sign.unsqueeze(-1) * A - eye).abs().amax() if nb else torch.zeros((), device=first.device)

    def _balance_diagonal(self, st: Stage, params, skip, exact: bool = True) -> torch.Tensor:
        """m = 1 blocks (rescales, gains, SwiGLU units): row norms by reduction, the action by one broadcast
        multiply per leg; nothing is gathered or scattered."""
        first = params[st.groups[0].param]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        dev, nb = first.device, st.n_blocks
        P = torch.zeros(nb, dtype=dtype, device=dev)
        Q = torch.zeros_like(P)
        sums = []
        for rg in st.groups:
            p = params[rg.param]
            dims = [d for d in range(p.dim()) if d != rg.axis]
            x = p.to(dtype) + rg.offset if rg.offset else p
            if not dims:
                sq = x.to(dtype).square()
            elif rg.axis == 0:      # rows: a contiguous reduction
                sq = torch.linalg.vector_norm(x, dim=dims, dtype=dtype).square()
            else:                   # columns: torch's strided norm is ~40x slower than square-and-sum here
                sq = x.to(dtype).square().sum(dim=dims)
            if not exact or not rg.orient:
                total = None
            elif dims:
                k = int(np.prod([p.shape[d] for d in dims]))
                total = torch.tensordot(x.to(dtype), _probe(k, P).view([p.shape[d] for d in dims]),
                                        dims=(dims, list(range(len(dims)))))
            else:
                total = x.to(dtype) * _probe(1, P)
            idx = rg.rows[:, 0]
            (Q if rg.dual else P).index_add_(0, rg.blocks, sq[idx])
            sums.append(None if total is None else total[idx])
        A, A_dual = _solve(st.kind, P.view(nb, 1, 1), Q.view(nb, 1, 1))
        c, c_dual = A.view(nb), A_dual.view(nb)
        moment = torch.zeros_like(P)
        for rg, total in zip(st.groups, sums):
            if total is not None:
                moment.index_add_(0, rg.blocks, (c_dual if rg.dual else c)[rg.blocks] * total)
        sign = _orientation(st.kind if exact else "pos", moment.view(nb, 1)).view(nb)
        for rg in st.groups:
            p = params[rg.param]
            factor = torch.ones(p.shape[rg.axis], dtype=dtype, device=dev)
            factor[rg.rows[:, 0]] = ((c_dual if rg.dual else c) * sign)[rg.blocks]
            shape = [1] * p.dim()
            shape[rg.axis] = -1
            factor = factor.view(shape)
            if skip is not None:        # a factor of exactly 1 leaves the rows bit for bit
                factor = torch.where(skip.bool(), torch.ones_like(factor), factor)
            if rg.offset:
                new = (factor * (p.to(dtype) + rg.offset) - rg.offset).to(p.dtype)
                p.copy_(new if skip is None else torch.where(skip.bool(), p, new))
            else:
                p.mul_(factor.to(p.dtype))
        return (sign * c - 1).abs().amax() if nb else torch.zeros((), device=dev)

    @torch.no_grad()
    def rebalance(self, params: dict[str, torch.Tensor], sweeps: int = 1, skip: torch.Tensor | None = None):
        """``sweeps`` per-step Gauss–Seidel sweeps over the colours (``exact=False``; no host synchronisation)."""
        for _ in range(sweeps):
            for st in self.stages:
                self.balance_stage(st, params, skip, exact=False)

    @torch.no_grad()
    def canonicalise(self, params: dict[str, torch.Tensor], tol: float | None = None, max_sweeps: int = 500) -> dict:
        """Move to the joint section, iterating to convergence; returns {sweeps, residual}.

        The sweeps run in float64 (on copies of lower-precision parameters, written back once), so the section is
        exact and then rounded to the parameters' precision."""
        work = {k: v.detach() if v.dtype == torch.float64 else v.detach().double() for k, v in params.items()}
        tol = 1e-12 if tol is None else tol
        residual = float("inf")
        report = None
        history: list[float] = []
        for sweep in range(1, max_sweeps + 1):
            residual = self._canonicalise_translations(work)
            for st in self.stages:
                residual = max(residual, float(self.balance_stage(st, work)))
            history.append(residual)
            # converged, or at the rounding floor (larger blocks' eigensolvers stall a little above tol)
            stalled = len(history) > 3 and residual < 1e3 * tol and residual > 0.5 * history[-4]
            if residual <= tol or stalled:
                report = {"sweeps": sweep, "residual": residual}
                break
        if report is None:
            warnings.warn(f"gaugec: the canonical section did not converge in {max_sweeps} sweeps (residual "
                          f"{residual:.2e} > {tol:.0e}); equivariance holds only to that level", stacklevel=2)
            report = {"sweeps": max_sweeps, "residual": residual}
        for k, v in params.items():
            if work[k] is not v.detach():
                v.detach().copy_(work[k])
        return report

def _sym_pows(M: torch.Tensor, *powers: float) -> list[torch.Tensor]:
    """M^p for a batch of symmetric positive definite M, one eigendecomposition for all powers."""
    w, U = torch.linalg.eigh(M)
    w = w.clamp_min(torch.finfo(M.dtype).tiny)
    return [(U * w.pow(p).unsqueeze(-2)) @ U.mT for p in powers]


def _solve(kind: str, P: torch.Tensor, Q: torch.Tensor):
    """The balancing element A of each block and the map A^-T applied to dual rows."""
    m = P.shape[-1]
    trP = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1)
    trQ = torch.diagonal(Q, dim1=-2, dim2=-1).sum(-1)
    ridge = (REGULARISER * (trP + trQ) / (2 * m)).clamp_min(torch.finfo(P.dtype).tiny)
    trP, trQ = trP + m * ridge, trQ + m * ridge
    if kind in ("pos", "scalar"):
        c = (trQ / trP).pow(0.25).reshape(-1, 1, 1)
        return c, 1.0 / c
    if kind == "rot2":
        s = (trQ / trP).pow(0.25)
        C = s[:, None, None] ** 2 * P + s[:, None, None] ** -2 * Q
        theta = 0.5 * torch.atan2(2 * C[:, 0, 1], C[:, 0, 0] - C[:, 1, 1])
        cos, sin = torch.cos(theta), torch.sin(theta)
        R = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        return s[:, None, None] * R, R / s[:, None, None]
    eye = torch.eye(m, dtype=P.dtype, device=P.device)
    P = P + ridge[:, None, None] * eye
    Q = Q + ridge[:, None, None] * eye
    Ph, Pmh = _sym_pows(P, 0.5, -0.5)
    M = Ph @ Q @ Ph
    (Mh,) = _sym_pows(0.5 * (M + M.mT), 0.5)
    S = Pmh @ Mh @ Pmh
    A0, A0_inv = _sym_pows(0.5 * (S + S.mT), 0.5, -0.5)
    bal = A0 @ P @ A0.mT
    _, U = torch.linalg.eigh(0.5 * (bal + bal.mT))
    Ut = U.flip(-1).mT                                        # balanced Gram diagonal, decreasing
    return Ut @ A0, Ut @ A0_inv                               # A and A^-T = U^T S^-1/2 (A0 symmetric)


def _probe(k: int, like: torch.Tensor) -> torch.Tensor:
    """A fixed non-constant vector r (r_j = cos(πφ j + ½)): ⟨row, r⟩ is odd in the row and, unlike Σ x, does not
    vanish on the zero-mean sections of the translations."""
    j = torch.arange(k, dtype=like.dtype, device=like.device)
    return torch.cos(j * (math.pi * 1.618033988749895) + 0.5)


def _first_order(kind: str, P: torch.Tensor, Q: torch.Tensor):
    """The per-step balancing element, for a block near balance. Scalars: the closed form. rot2: its scale only
    (the rotation is compact: nothing to balance). GL: a damped Newton step on log‖g·θ‖² from the identity,
    X = (Q - P) / (2 ‖P + Q‖_F) (the scalar case to first order; ‖X‖ < ½ keeps I ± X/2 well conditioned), applied
    as the Cayley transform A = (I - X/2)^-1 (I + X/2): symmetric, with A^-T = (I + X/2)^-1 (I - X/2) exact — no
    eigensolver."""
    if kind in ("pos", "scalar"):
        return _solve("pos", P, Q)
    m = P.shape[-1]
    trP = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(P.dtype).tiny)
    trQ = torch.diagonal(Q, dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(P.dtype).tiny)
    eye = torch.eye(m, dtype=P.dtype, device=P.device)
    if kind == "rot2":
        s = (trQ / trP).pow(0.25)[:, None, None]
        return s * eye, eye / s
    # Newton would solve X (P + Q) + (P + Q) X = Q - P; dividing by ‖P + Q‖_F ≥ λ_max instead never overshoots
    # (a contraction in every eigendirection) and needs no eigensolver.
    X = 0.5 * (Q - P) / torch.linalg.matrix_norm(P + Q).clamp_min(torch.finfo(P.dtype).tiny)[:, None, None]
    X = 0.5 * (X + X.mT)
    return torch.linalg.solve(eye - 0.5 * X, eye + 0.5 * X), torch.linalg.solve(eye + 0.5 * X, eye - 0.5 * X)


def _orientation(kind: str, moment: torch.Tensor) -> torch.Tensor:
    """±1 per row fixing the compact part: positive ⟨row, r⟩ (rot2: of the principal row, for both rows)."""
    sign = torch.where(moment < 0, -1.0, 1.0).to(moment.dtype)
    if kind == "rot2":
        return sign[:, :1].expand_as(sign)
    if kind == "pos":
        return torch.ones_like(sign)
    return sign
