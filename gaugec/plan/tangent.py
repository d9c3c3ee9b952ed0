"""A plan's generators as a linear operator, and its orbit dimension from the plan's structure.

B ∈ R^{k x n} is the tangent basis: row i is d/dt exp(t X_i)·θ for the i-th generator (X_i runs over each block's
Lie-algebra basis, then over the unit translations of the additive gauges), the columns are the parameters
(``named_parameters()`` order, tied tensors once). Both tools here avoid forming B, which is k x n dense (a 4 → 4096
→ 3 MLP has k ≈ 8 000, n ≈ 33 000; GPT-2 small k ≈ 10⁶, n ≈ 1.2·10⁸).

:class:`TangentOperator`  ``matvec(c) = Bᵀ c`` (the tangent of the algebra element with coordinates c) and
                          ``rmatvec(v) = B v`` (each generator's inner product with v, by reverse-mode AD of the
                          action, one gauge at a time).

:func:`orbit_dimension`   rank B. Gauges that share no parameter have tangents with disjoint supports, so the rank is
                          a sum over the connected components of the gauges-share-a-parameter graph. A small component
                          is ranked densely (exact). A large one is ranked from its structure:

  * a multiplicative gauge's blocks act on disjoint coordinates, so its rank is Σ_b (dim G_b − dim stab_b), the
    stabiliser of block b read off the ranks of the Grams of the rows it moves (``BlockKind.stabiliser``: GL(m) fixes
    (m − rk P)(m − rk Q) dimensions, O(m) fixes so(m − rk(P + Q)), a scale fixes everything only when every row
    it moves is zero);
  * an additive gauge's coordinates move disjoint entries of their seed parameters with non-zero weights, so its
    rank is its dimension, except where two seed legs share a parameter: a leg broadcast along rows (w_A ⊗ t) and
    one along columns (s ⊗ w_B) meet in w_A ⊗ w_B, a candidate dependency whose whole tangent (absorbing biases
    included) is computed; the dependencies are the candidates whose tangents vanish together;
  * different gauges of a component are taken to be independent. This holds at generic parameters for every model
    the tests compare with the dense rank (every zoo model, Hugging Face models, zero-initialised and low-rank
    weights); where it could fail (two gauges whose generators coincide at special weights) the dense rank of the
    component is the judge, which ``method="dense"`` computes.
"""
from __future__ import annotations

import numpy as np
import torch

from gaugec.groups import kind as block_kind
from gaugec.plan.action import cached_layout, conj_gain, shift_weight

# a component's dense block [generators x parameters] is ranked exactly up to this many entries (32 MB in float64)
DENSE_LIMIT = 4_000_000
# the most entries tangent_basis() forms; above it, use the operator (plan.tangent_operator())
BASIS_LIMIT = 50_000_000
# a candidate dependency is one when its tangent is below this, relative to the tangents it combines
NULL_RTOL = 1e-10


class StructuralRankError(ValueError):
    """A large component has a pattern the structural rank does not cover and is too large to rank densely."""


def _dual(role: str, parity: int) -> bool:
    """Whether a leg's rows move by A^-T (dual) rather than A (direct)."""
    return (not parity) if role == "in" else bool(parity)


def add_flat(parts: dict[str, torch.Tensor], offsets: dict[str, int], out: torch.Tensor) -> torch.Tensor:
    """Add per-parameter tensors into the flat vector ``out`` at their ``offsets`` (in place)."""
    for name, t in parts.items():
        o = offsets[name]
        out[o:o + t.numel()] += t.reshape(-1).to(out.device)
    return out


class TangentOperator:
    """B (generators x parameters) as an operator. ``shape = (k, n)``; ``slices[i]`` are the coordinates of gauge i.

    matvec(c) = Bᵀ c ∈ R^n: the tangent of Σ_i c_i X_i (float64, flat like ``tangent_basis`` columns);
    rmatvec(v) = B v ∈ R^k: ⟨row_i, v⟩ per generator.
    """

    def __init__(self, plan, params: dict[str, torch.Tensor] | None = None):
        self.plan = plan
        self.params = plan._params() if params is None else params
        self.offsets, n = plan._offsets()
        starts = np.cumsum([0] + [g.dim for g in plan.gauges])
        self.slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.shape = (int(starts[-1]), n)

    def gauge_tangent(self, gauge, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per moved parameter, the tangent of the gauge's algebra element with coordinates c (differentiable in c)."""
        if gauge.kind == "add":
            return self.plan.additive_changes(gauge, c, self.params)
        mats, o = [], 0
        for name, m in gauge.blocks:
            bk = block_kind(name)
            d = bk.dim(m)
            mats.append(bk.algebra_element(c[o:o + d], m) if d else None)
            o += d
        return self.plan.mult_tangent(gauge, mats, self.params)

    def matvec(self, c) -> torch.Tensor:
        c = torch.as_tensor(c, dtype=torch.float64).reshape(-1)
        if c.numel() != self.shape[0]:
            raise ValueError(f"matvec takes {self.shape[0]} generator coordinates, got {c.numel()}")
        out = torch.zeros(self.shape[1], dtype=torch.float64)
        for g, sl in zip(self.plan.gauges, self.slices):
            if bool((c[sl] != 0).any()):
                add_flat(self.gauge_tangent(g, c[sl]), self.offsets, out)
        return out

    def rmatvec(self, v) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if v.numel() != self.shape[1]:
            raise ValueError(f"rmatvec takes {self.shape[1]} parameter coordinates, got {v.numel()}")
        out = torch.zeros(self.shape[0], dtype=torch.float64)
        for g, sl in zip(self.plan.gauges, self.slices):
            c = torch.zeros(g.dim, dtype=torch.float64, requires_grad=True)
            with torch.enable_grad():
                parts = self.gauge_tangent(g, c)
                dot = sum((t.reshape(-1) * self._slice(v, name)).sum() for name, t in parts.items())
                if isinstance(dot, torch.Tensor) and dot.requires_grad:
                    out[sl] = torch.autograd.grad(dot, c)[0]
        return out

    def _slice(self, v: torch.Tensor, name: str) -> torch.Tensor:
        o = self.offsets[name]
        return v[o:o + int(np.prod(self.plan._param_info[name].shape, dtype=np.int64))]


# -- orbit dimension ------------------------------------------------------------------------------------------------

def components(gauges) -> list[list[int]]:
    """Indices of gauges grouped by the connected components of the shares-a-parameter graph (plan order)."""
    parent = list(range(len(gauges)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, g in enumerate(gauges):
        for name in g.params:
            if name in owner:
                parent[find(i)] = find(owner[name])
            else:
                owner[name] = i
    out: dict[int, list[int]] = {}
    for i in range(len(gauges)):
        out.setdefault(find(i), []).append(i)
    return list(out.values())


def _numel(plan, name: str) -> int:
    return int(np.prod(plan._param_info[name].shape, dtype=np.int64))


def _dense_rank(plan, gauges, params) -> int:
    names = list(dict.fromkeys(n for g in gauges for n in g.params))
    offsets, o = {}, 0
    for name in names:
        offsets[name] = o
        o += _numel(plan, name)
    B = torch.cat([plan.gauge_tangents(g, params, layout=(offsets, o)) for g in gauges], 0)
    return int(torch.linalg.matrix_rank(B).item()) if B.shape[0] else 0


def orbit_dimension(plan, params: dict[str, torch.Tensor] | None = None, method: str = "auto",
                    dense_limit: int = DENSE_LIMIT) -> int:
    """rank B at the plan's parameters (or ``params``): ``method`` "dense" ranks every component densely, "structural"
    none (the tests compare the two), "auto" the components with at most ``dense_limit`` entries."""
    if method not in ("auto", "dense", "structural"):
        raise ValueError(f"unknown method {method!r}: auto, dense or structural")
    params = plan._params() if params is None else params
    total = 0
    op = None
    for comp in components(plan.gauges):
        gauges = [plan.gauges[i] for i in comp]
        k = sum(g.dim for g in gauges)
        n = sum(_numel(plan, name) for name in dict.fromkeys(p for g in gauges for p in g.params))
        if method == "dense" or (method == "auto" and k * n <= dense_limit):
            total += _dense_rank(plan, gauges, params)
            continue
        op = op or TangentOperator(plan, params)
        total += _structural_rank(plan, comp, params, op, dense_limit if method == "auto" else 0)
    return total


def _freely_shifted(gauges, params) -> set[str]:
    """Parameters an additive gauge shifts entry by entry (a bias translation's seed: every entry a coordinate)."""
    return {lg.param for g in gauges if g.kind == "add" for lg in g.legs
            if lg.role == "shift" and not lg.axes and not lg.part and not lg.conj
            and (lg.select is None or len(lg.select) == params[lg.param].numel())}


def _structural_rank(plan, comp: list[int], params, op: TangentOperator, dense_limit: int) -> int:
    rank = 0
    additive = []
    # rank(M + T) = rank T + rank(M mod T): where a translation moves every entry of p freely, a multiplicative
    # tangent's part on p lies in span T (up to what T's compensation moves, which the found symmetry already fixes:
    # a wide Linear → Linear pair's GL(h) overlaps the bias translation in (X b = t, X W = 0, W₂ X = 0))
    shifted = _freely_shifted([plan.gauges[i] for i in comp], params)
    for i in comp:
        g = plan.gauges[i]
        if g.kind == "add":
            additive.append(i)
            continue
        grams = _block_grams(g, params, skip=shifted)
        if grams is None:            # rows moved twice by one gauge, or a gain on a non-diagonal block
            n = sum(_numel(plan, name) for name in g.params)
            if g.dim * n > max(dense_limit, BASIS_LIMIT):
                raise StructuralRankError(
                    f"gauge {g.name} moves one parameter through two legs (or a gain through a non-diagonal block) "
                    f"and is too large to rank densely ({g.dim} x {n})")
            rank += _dense_rank(plan, [g], params)
            continue
        for (kname, m), (P, Q) in zip(g.blocks, grams):
            bk = block_kind(kname)
            rank += bk.dim(m) - bk.stabiliser(P, Q)
    if additive:
        try:
            rank += _additive_rank(plan, additive, params, op)
        except StructuralRankError:
            gauges = [plan.gauges[i] for i in additive]
            n = sum(_numel(plan, name) for name in dict.fromkeys(p for g in gauges for p in g.params))
            if sum(g.dim for g in gauges) * n > max(dense_limit, BASIS_LIMIT):
                raise
            rank += _dense_rank(plan, gauges, params)
    return rank


def _block_grams(gauge, params, skip=frozenset()) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per block, (P, Q) = the Grams of the rows it moves directly (by A) and dually (by A^-T), each row scaled so
    that the block's tangent vanishes on it exactly when X (or Xᵀ) kills it: a conjugated writer's rows by D⁻¹, a
    conjugated reader's by D (D X D⁻¹ R = 0 ⇔ X D⁻¹ R = 0; D⁻¹ Xᵀ D R = 0 ⇔ Xᵀ D R = 0). A gain g moves as the row
    g + offset. None where this does not decide the rank: a parameter moved by two legs of the gauge (W ← A W A⁻¹:
    the two tangents add on the same entries) or a gain on a block that is not diagonal. Legs on ``skip`` are left
    out."""
    legs = [lg for lg in gauge.legs if lg.role != "absorb"]
    if len({lg.param for lg in legs}) < len(legs):
        return None
    legs = [lg for lg in legs if lg.param not in skip]
    grams = [(torch.zeros(m, m, dtype=torch.float64), torch.zeros(m, m, dtype=torch.float64)) for _, m in gauge.blocks]
    for lg in legs:
        p = params[lg.param].detach().to(torch.float64)
        p, axis = lg.slice_of(p)
        flat = p.movedim(axis, 0).reshape(p.shape[axis], -1).cpu()
        if lg.role == "gain":
            flat = flat + lg.offset
        d = conj_gain(lg, params)
        scale = None if d is None else (d if lg.role == "in" else 1.0 / d)
        for m, parity, blocks, pos in cached_layout(lg):     # every copy of a size at once: [nc, m] positions
            if lg.role == "gain" and any(gauge.blocks[b][0] not in ("scalar", "pos", "scale") for b in blocks):
                return None
            pos = torch.as_tensor(pos)
            R = flat[pos]                                       # [nc, m, rest], rows in local order
            if scale is not None:
                R = R * scale[pos][:, :, None]
            G = R @ R.mT
            side = 1 if _dual(lg.role, parity) else 0
            for b, Gb in zip(blocks.tolist(), G):
                grams[b][side].add_(Gb)
    return grams


def _additive_rank(plan, idx: list[int], params, op: TangentOperator) -> int:
    """Σ dims − (candidate dependencies whose whole tangents vanish together), see the module docstring."""
    seeds = []                                  # (leg, first coordinate in the operator)
    for i in idx:
        k = op.slices[i].start
        for lg in plan.gauges[i].legs:
            if lg.role == "shift":
                seeds.append((lg, k))
                k += lg.shift_dim(tuple(params[lg.param].shape))
    by_param: dict[str, list] = {}
    for s in seeds:
        by_param.setdefault(s[0].param, []).append(s)
    candidates = []                             # (coordinates over the operator, size of the pieces that cancel)
    for name, legs in by_param.items():
        for a in range(len(legs)):
            for b in range(a + 1, len(legs)):
                candidates += _overlaps(params, op.shape[0], legs[a], legs[b])
    total = sum(plan.gauges[i].dim for i in idx)
    if not candidates:
        return total
    C = torch.stack([c for c, _ in candidates])
    return total - int(torch.linalg.matrix_rank(C).item()) + _rank_of_tangents(plan, op, candidates)


def _weight(leg, params, shape: tuple) -> torch.Tensor:
    """The broadcast pattern a seed coordinate moves: w over the leg's ``axes`` (flattened; 1 when there are none)."""
    w = shift_weight(leg, params)
    n = int(np.prod([shape[a] for a in leg.axes], dtype=np.int64))
    return torch.ones(n, dtype=torch.float64) if w is None else w.reshape(-1).to(torch.float64)


def _free_indices(leg, shape: tuple) -> np.ndarray:
    n = int(np.prod([s for i, s in enumerate(shape) if i not in leg.axes], dtype=np.int64))
    return np.arange(n) if leg.select is None else np.asarray(leg.select)


def _overlaps(params, k: int, sa, sb) -> list[tuple[torch.Tensor, float]]:
    """Candidate dependencies between two seed legs on one parameter. Coordinate j of a leg moves e_f ⊗ w (f its
    j-th free index, w its pattern over the broadcast ``axes``). Two legs broadcast along the same axes coincide on
    their common f's when w_A = λ w_B (coordinates 1 on A, −λ on B); on a matrix, a leg broadcast along rows and one
    along columns meet in w_A ⊗ w_B when both move every f (coordinates w_B on A, −w_A on B)."""
    (A, ka), (B, kb) = sa, sb
    shape = tuple(params[A.param].shape)
    if A.part != B.part:
        if A.part and B.part and {ax for ax, _ in A.part} == {ax for ax, _ in B.part}:
            return []                           # two experts' slices of one stacked weight: disjoint
        raise StructuralRankError(f"two seed legs on {A.param} in a pattern the structural rank does not cover")
    shape = tuple(s for i, s in enumerate(shape) if i not in {ax for ax, _ in A.part})
    wa, wb = _weight(A, params, shape), _weight(B, params, shape)
    fa, fb = _free_indices(A, shape), _free_indices(B, shape)
    out = []
    if tuple(A.axes) == tuple(B.axes):
        lam = float(wa @ wb) / float(wb @ wb)
        if float((wa - lam * wb).norm()) > NULL_RTOL * float(wa.norm()):
            return out
        pos_b = {int(f): j for j, f in enumerate(fb)}
        for j, f in enumerate(fa):
            if int(f) in pos_b:
                c = torch.zeros(k, dtype=torch.float64)
                c[ka + j], c[kb + pos_b[int(f)]] = 1.0, -lam
                out.append((c, float(wa.norm())))
        return out
    if len(shape) != 2 or len(A.axes) != 1 or len(B.axes) != 1:
        raise StructuralRankError(f"two seed legs on {A.param} in a pattern the structural rank does not cover")
    if len(fa) == len(wb) and len(fb) == len(wa):
        c = torch.zeros(k, dtype=torch.float64)
        c[ka:ka + len(fa)] = wb[torch.as_tensor(fa)]
        c[kb:kb + len(fb)] = -wa[torch.as_tensor(fb)]
        out.append((c, float(wa.norm() * wb.norm())))
    return out


def _rank_of_tangents(plan, op: TangentOperator, candidates) -> int:
    """The rank of the candidates' whole tangents, each scaled by the size of the pieces that cancel in it (a
    dependency's tangent is rounding, ≪ NULL_RTOL of that)."""
    tangents = []
    for c, scale in candidates:
        parts: dict[str, torch.Tensor] = {}
        for g, sl in zip(plan.gauges, op.slices):
            if bool((c[sl] != 0).any()):
                for name, t in op.gauge_tangent(g, c[sl]).items():
                    parts[name] = parts[name] + t if name in parts else t
        tangents.append({name: t / max(scale, 1e-300) for name, t in parts.items()})
    G = torch.zeros(len(tangents), len(tangents), dtype=torch.float64)
    for i, ti in enumerate(tangents):
        for j, tj in enumerate(tangents[:i + 1]):
            G[i, j] = G[j, i] = sum(float((ti[n] * tj[n]).sum()) for n in ti.keys() & tj.keys())
    return int((torch.linalg.eigvalsh(G) > NULL_RTOL ** 2).sum())
