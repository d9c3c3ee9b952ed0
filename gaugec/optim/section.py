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
import time
import warnings

import networkx as nx
import numpy as np
import torch

from gaugec.arrays import distinct
from gaugec.groups import kind as block_kind
from gaugec.plan import Gauge, PlanMismatchError, groups_of_entries, slice_part

MAX_NORM_RATIO = 1e8      # canonicalisation never rescales a non-zero parameter's norm by more than this


class CanonicalisationError(ValueError):
    """The canonical section cannot be taken safely (a NaN/inf or meta parameter, or a result that would move a
    parameter towards zero or infinity); nothing was written."""


class PhaseClock:
    """Wall time per phase of the per-step work, summed over steps (``python -m gaugec.bench step`` reads it).
    ``start()`` opens a step; ``lap(phase)`` charges the time since the previous lap to ``phase``. On a GPU the device
    is synchronised at every lap, so the split is right there too, and the step is slower while a clock is on."""

    def __init__(self, device: torch.device):
        self.totals: dict[str, float] = {}
        self._sync = torch.cuda.synchronize if device.type == "cuda" else None
        self._last = 0.0

    def _now(self) -> float:
        if self._sync is not None:
            self._sync()
        return time.perf_counter()

    def start(self):
        self._last = self._now()

    def lap(self, phase: str):
        now = self._now()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self._last
        self._last = now


@dataclasses.dataclass(frozen=True)
class Shard:
    """The rows [lo, hi) of a parameter's dim 0 (of n) that this rank holds: FSDP2's ``Shard(0)`` placement."""

    lo: int
    hi: int
    n: int


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
    part: tuple = ()          # the slice of the parameter the rows live in (Leg.part: one expert)
    # sharded executors only (OrbitExecutor.localised): the parameter's dim 0 is split over the ranks and the rows
    # run along another axis, so each rank's statistics are partial sums over its dim-0 rows (``shard``); or the
    # parameter is whole on every rank and only rank 0 adds its statistics (``replica``)
    shard: Shard | None = None
    replica: bool = False
    # copies whose rows straddle ranks' shards: which rows this rank holds ([n, m] bool; None: a plain group); the
    # rows are summed over the ranks before use, so every rank sees the whole copies
    present: torch.Tensor | None = None
    # rows == span + arange(n * m) (heads laid out one after another, the common case): the rows are then a view of
    # the parameter (no gather, no scatter); None otherwise
    span: int | None = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        flat = self.rows.reshape(-1)
        if self.present is None and len(flat) and bool(
                (flat == flat[0] + torch.arange(len(flat), device=flat.device)).all()):
            self.span = int(flat[0])


@dataclasses.dataclass
class Stage:
    """All blocks of one colour with one (kind, size): one batched solve."""

    kind: str
    m: int
    n_blocks: int
    groups: list[RowGroup]
    owners: list[tuple[str, int]] = dataclasses.field(default_factory=list)   # (gauge, its block) of each block


@dataclasses.dataclass
class SeedLeg:
    """A translation seed: its mean over ``axes`` (restricted to ``mask``) is the vertical coordinate. A weighted
    seed (p <- p + t ⊗ d⁻¹ along its one axis, d read off a gain: the LayerNorm kernel) has the coordinate
    φ = mean(p ⊙ d) instead, so that φ(p + t ⊗ d⁻¹) = φ(p) + t; its section {φ = 0} (W γ = 0 for a reader of a
    LayerNorm) is kept by every gain rescale (γ <- c γ, W <- W c⁻¹) and by the rotations fixing the ones vector."""

    param: str
    axes: tuple
    mask: torch.Tensor | None   # 1 where the translation moves the entry (shape of the mean), None: all
    part: tuple = ()            # the slice of the parameter the seed lives in (Leg.part: one expert)
    gain: str = ""              # weighted seed: the gain parameter d is read from ("" = unweighted)
    gain_index: torch.Tensor | None = None   # γ's flat index per index along the one broadcast axis
    gain_offset: float = 0.0
    shard: Shard | None = None  # sharded executors: the parameter's dim 0 is split over the ranks


def _dual(role: str, parity: int) -> bool:
    if role == "in":
        return not parity
    return bool(parity)       # out, gain


def one_sided(gauge: Gauge) -> bool:
    """A multiplicative gauge none of whose rows is dual (moved by A^-T): ‖g·θ‖ → 0 along its orbit, so it has no
    minimum-norm point (a norm input scale)."""
    return gauge.kind == "mult" and not any(
        _dual(lg.role, int(parity)) for lg in gauge.legs if lg.entries is not None
        for parity in distinct(lg.entries[lg.entries[:, 0] >= 0, 2]))


class OrbitExecutor:
    """Canonical sections of a plan's gauges, batched per colour and block shape.

    ``canonicalise(params)`` moves parameters to the joint section (run once, to convergence);
    ``project_translations(params)`` and ``rebalance(params, sweeps)`` keep them there after an update.
    """

    def __init__(self, plan, excluded: dict[str, str] | None = None):
        """``excluded``: parameters that must never be written (frozen, or owned by no optimizer), each with the
        reason; a gauge with a leg on one of them is left out, with one warning for all."""
        self.plan = plan
        self.skipped: list[tuple[str, str]] = []
        self.rotations: list[tuple[Gauge, list]] = []     # compact gauges and the legs that fix their frame
        mult, add = [], []
        for g in plan.gauges:
            reason = self._unsupported(g, excluded or {})
            if reason:
                self.skipped.append((g.name, reason))
                continue
            if g.compact:
                frame = self._frame_legs(g, plan.gauges, {k: len(i.shape) for k, i in plan._param_info.items()})
                if not frame:
                    self.skipped.append((g.name, "a rotation none of whose legs only it moves (its frame cannot be "
                                                 "fixed equivariantly)"))
                    continue
                self.rotations.append((g, frame))
                continue
            (mult if g.kind == "mult" else add).append(g)
        if self.skipped:
            listing = "; ".join(f"{name}: {reason}" for name, reason in self.skipped)
            warnings.warn(f"gaugec: {len(self.skipped)} gauge(s) left out of the canonical frame (trained by the "
                          f"base step, not equivariant for them): {listing}", stacklevel=3)
        self.mult_gauges, self.add_gauges = mult, add
        self.stages = self._compile_stages(mult)
        self.seeds = [self._seed_legs(g) for g in add]
        self.group = None      # the process group of a sharded executor (see localised)
        self.rank = 0
        self.clock: PhaseClock | None = None     # on: the per-step work's time split (statistics, solves, application)
        self._work: dict[tuple, torch.Tensor] = {}   # reused per-step buffers (see _moved), one per dtype and device

    def _lap(self, phase: str):
        if self.clock is not None:
            self.clock.lap(phase)

    # -- sharded parameters (FSDP2) ----------------------------------------------------------------------------------
    def localised(self, shards: dict[str, Shard], group) -> "OrbitExecutor":
        """This executor for one rank of ``group``, whose parameters in ``shards`` are split along dim 0 (FSDP2's
        ``Shard(0)``; the others are whole on every rank). It runs on the local tensors (``DTensor.to_local()``):
        rows along dim 0 keep the copies held here; rows along another axis (every rank holds all of them, over
        its own dim-0 rows) see partial statistics. Every stage's statistics are summed over the ranks by one
        all-reduce, so every rank solves the same small problem and moves its own rows; no parameter is gathered.
        The few copies whose rows straddle two ranks' shards are summed over the ranks first (each rank holds
        some of their rows, zero elsewhere: a gather of those rows only), counted once, and each rank writes back
        its own. A leg on one slice of a sharded dim 0 (a stacked expert) is not supported yet: a clear error."""
        import copy

        import torch.distributed as dist

        out = copy.copy(self)
        out.group, out.rank, out._work = group, dist.get_rank(group), {}
        names = sorted(shards)          # every rank's rows of every sharded parameter: one all-gather
        held = torch.tensor([[shards[n].lo, shards[n].hi] for n in names], dtype=torch.long).reshape(-1, 2)
        every = [torch.zeros_like(held) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, held, group=group)
        ranges = {n: [(int(e[i, 0]), int(e[i, 1])) for e in every] for i, n in enumerate(names)}
        out.stages = []
        for st in self.stages:
            groups = []
            for rg in st.groups:
                sh = shards.get(rg.param)
                if sh is None:
                    groups.append(dataclasses.replace(rg, replica=True))
                    continue
                _refuse_sharded_part(rg.param, rg.part)
                if rg.axis != 0:
                    groups.append(dataclasses.replace(rg, shard=sh))
                    continue
                here = (rg.rows >= sh.lo) & (rg.rows < sh.hi)
                mine = here.all(1)
                groups.append(dataclasses.replace(rg, rows=rg.rows[mine] - sh.lo, blocks=rg.blocks[mine]))
                within_one = torch.zeros(len(rg.rows), dtype=torch.bool)
                for lo, hi in ranges[rg.param]:
                    within_one |= ((rg.rows >= lo) & (rg.rows < hi)).all(1)
                straddle = ~within_one          # the same copies on every rank: their rows are summed over ranks
                if bool(straddle.any()):
                    rows = torch.where(here, rg.rows - sh.lo, 0) if sh.hi > sh.lo else torch.zeros_like(rg.rows)
                    groups.append(dataclasses.replace(rg, rows=rows[straddle], blocks=rg.blocks[straddle],
                                                      present=here[straddle], replica=True))
            out.stages.append(dataclasses.replace(st, groups=groups))
        out.seeds = []
        for legs in self.seeds:
            local = []
            for sl in legs:
                sh = shards.get(sl.param)
                if sh is not None:
                    _refuse_sharded_part(sl.param, sl.part)
                    mask = sl.mask
                    if mask is not None and 0 not in sl.axes:     # one entry per dim-0 row: keep this rank's
                        mask = mask.narrow(0, sh.lo, sh.hi - sh.lo)
                    sl = dataclasses.replace(sl, shard=sh, mask=mask)
                local.append(sl)
            out.seeds.append(local)
        return out

    def _reduce(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor summed over the ranks, by one all-reduce for all of them (unchanged without a group)."""
        if self.group is None:
            return tensors
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=self.group)
        return tuple(f.view_as(t) for f, t in zip(flat.split([t.numel() for t in tensors]), tensors))

    def _adds(self, rg: RowGroup) -> bool:
        """Whether this rank adds ``rg``'s statistics (a whole replica is counted once, on rank 0)."""
        return not rg.replica or self.rank == 0

    @staticmethod
    def _probe_rows(rg: RowGroup, rest_shape: list[int], like: torch.Tensor) -> torch.Tensor:
        """The probe r over a row's entries (shape ``rest_shape``, dim 0 of the parameter first); for a sharded
        parameter, this rank's slice of the probe over the whole dim 0, so that the projections add up."""
        if rg.shard is None:
            return _probe(int(np.prod(rest_shape, dtype=np.int64)), like).view(rest_shape)
        sh = rg.shard
        full = [sh.n, *rest_shape[1:]]
        return _probe(int(np.prod(full, dtype=np.int64)), like).view(full).narrow(0, sh.lo, sh.hi - sh.lo)

    # -- compilation -----------------------------------------------------------------------------------------------
    @staticmethod
    def _unsupported(g: Gauge, excluded: dict[str, str]) -> str:
        for p in g.params:
            if p in excluded:
                return f"it moves {p}, which is {excluded[p]}"
        if g.kind == "mult":
            for k, m in g.blocks:
                if not block_kind(k).has_section:
                    return f"its {block_kind(k).label(m)} block has no canonical section yet"
            if any(lg.role == "absorb" for lg in g.legs):
                return ("a bias follows it through the graph (a batch norm's input scale): its section is not "
                        "derived yet")
            axes: dict[tuple, set] = {}
            for lg in g.legs:
                axes.setdefault((lg.param, lg.part), set()).add(lg.axis)
                if lg.role == "gain" and any(m > 1 for _, m in g.blocks):
                    return "a gain leg on a block larger than 1"
            if any(len(a) > 1 for a in axes.values()):
                return "it acts on two axes of one parameter (a self-contraction)"
        return ""

    @staticmethod
    def _frame_legs(g: Gauge, gauges: list[Gauge], ndim: dict[str, int]) -> list[tuple]:
        """The legs that fix a rotation gauge's frame, each with whether its rows are centred first: writer rows
        (moved by R itself, not conjugated) of parameters that no other gauge moves, except a common scale c I on the
        same axis (which keeps the Gram's eigenvectors); for a rotation fixing the ones vector, a shift along that
        vector (invisible to the centred Gram its frame reads); and a translation adding one vector to every row
        (an embedding's translation, absorbed by another table), which the rows centred over their other axes do not
        see. Their Gram M = Σ X Xᵀ goes to R M Rᵀ under the rotation and is unchanged by every other gauge, which is
        what makes the principal-axis frame a section (docs/ddc.md)."""
        fixes_ones = all(k == "orth1" for k, _ in g.blocks)

        def effect(other, lg):
            """None: the other gauge disturbs the leg's Gram; else whether the rows must be centred for it not to."""
            mine = [o for o in other.legs if o.param == lg.param]
            if other.kind == "add":
                plain = all(o.role == "shift" and not o.part and not o.conj and o.select is None for o in mine)
                if plain and fixes_ones and all(lg.axis in o.axes for o in mine):
                    return False        # along the ones direction of the rotated axis
                rest = set(range(ndim[lg.param])) - {lg.axis}
                if plain and all(lg.axis not in o.axes and set(o.axes) == rest for o in mine):
                    return True         # one vector added to every row: centre the rows
                return None
            ok = all(k == "scale" for k, _ in other.blocks) and all(o.axis == lg.axis for o in mine)
            return False if ok else None
        out = []
        for lg in g.legs:
            if lg.role != "out" or lg.conj or (lg.entries[lg.entries[:, 0] >= 0, 2] != 0).any():
                continue
            effects = [effect(o, lg) for o in gauges if o is not g and lg.param in o.params]
            if None not in effects:
                out.append((lg, any(effects)))
        return out

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
                st = stages.setdefault((colour[i], kind, m), {"n": 0, "groups": {}, "owners": []})
                first_block[b] = (st, st["n"])
                st["n"] += 1
                st["owners"].append((g.name, b))
            for lg in g.legs:
                for b, copies in groups_of_entries(lg.entries).items():
                    st, local_block = first_block[b]
                    m = g.blocks[b][1]
                    for pos, loc, parity in copies:
                        if sorted(loc) != list(range(m)):
                            raise PlanMismatchError(f"gauge {g.name}: leg {lg.param} covers part of a block")
                        order = np.argsort(loc)
                        orient = lg.param in exclusive or not exclusive
                        key = (lg.param, lg.axis, _dual(lg.role, parity), lg.offset, orient, lg.part)
                        rows, blocks = st["groups"].setdefault(key, ([], []))
                        rows.append(np.asarray(pos)[order])
                        blocks.append(local_block)
        out = []
        for (c, kind, m), st in sorted(stages.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
            groups = []
            for (p, ax, dual, off, orient, part), (r, bl) in st["groups"].items():
                rows = np.stack(r)
                order = np.argsort(rows[:, 0], kind="stable")   # copies in row order: heads side by side are a view
                groups.append(RowGroup(p, ax, torch.as_tensor(rows[order], dtype=torch.long),
                                       torch.as_tensor(np.asarray(bl)[order], dtype=torch.long), dual, off, orient,
                                       part))
            out.append(Stage(kind, m, st["n"], groups, st["owners"]))
        return out

    def _seed_legs(self, g: Gauge) -> list[SeedLeg]:
        info = self.plan._param_info
        legs = []
        for lg in g.legs:
            if lg.role != "shift":
                continue
            shape = lg.part_shape(tuple(info[lg.param].shape))
            mean_shape = [1 if i in lg.axes else s for i, s in enumerate(shape)]
            mask = None
            if lg.select is not None:
                mask = torch.zeros(int(np.prod(mean_shape, dtype=np.int64)), dtype=torch.float64)
                mask[torch.as_tensor(lg.select)] = 1.0
                mask = mask.reshape(mean_shape)
            legs.append(SeedLeg(lg.param, tuple(lg.axes), mask, lg.part, lg.conj,
                                None if not lg.conj else torch.as_tensor(lg.conj_index, dtype=torch.long),
                                lg.conj_offset))
        return legs

    def to(self, device):
        for st in self.stages:
            for rg in st.groups:
                rg.rows, rg.blocks = rg.rows.to(device), rg.blocks.to(device)
                if rg.present is not None:
                    rg.present = rg.present.to(device)
        for legs in self.seeds:
            for sl in legs:
                if sl.mask is not None:
                    sl.mask = sl.mask.to(device)
                if sl.gain_index is not None:
                    sl.gain_index = sl.gain_index.to(device)
        return self

    # -- translations ----------------------------------------------------------------------------------------------
    @staticmethod
    def _seed_weight(sl: SeedLeg, params: dict[str, torch.Tensor], like: torch.Tensor):
        """(d, ok) for a weighted seed, d shaped to broadcast along its axis (d = 1 where it is not finite and
        non-zero; ok, a 0-dim bool, says whether it is, over the whole gain); (None, None) for an unweighted one.
        The gain must be whole (a sharded one gathered first); on a sharded seed whose axis is dim 0, d keeps this
        rank's rows."""
        if not sl.gain:
            return None, None
        d = params[sl.gain].detach().reshape(-1)[sl.gain_index].to(like.dtype) + sl.gain_offset
        good = torch.isfinite(d) & (d != 0)
        d = torch.where(good, d, torch.ones_like(d))
        if sl.shard is not None and sl.axes[0] == 0:
            d = d[sl.shard.lo:sl.shard.hi]
        return d.reshape([-1 if i == sl.axes[0] else 1 for i in range(like.ndim)]), good.all()

    @classmethod
    def _seed_mean(cls, p: torch.Tensor, sl: SeedLeg, params: dict[str, torch.Tensor]):
        """(φ, d): the seed's vertical coordinate (its mean over the broadcast axes; mean(p ⊙ d) for a weighted
        seed, held at 0 where d has a zero or non-finite entry) and the weight d (None: unweighted). On a seed
        sharded along a broadcast axis (dim 0), φ is this rank's share of the mean (the sum over the ranks is the
        mean), see :meth:`_sharded_mean`."""
        p = slice_part(p, 0, sl.part)[0]
        d, ok = cls._seed_weight(sl, params, p)
        count = int(np.prod([sl.shard.n if cls._sharded_mean(sl) and a == 0 else p.shape[a] for a in sl.axes],
                            dtype=np.int64))
        if d is not None:          # Σ_j p_ij d_j as one matrix-vector product: no p ⊙ d temporary (one read of p)
            axis = sl.axes[0]
            mean = torch.tensordot(p, d.reshape(-1), dims=([axis], [0])).unsqueeze(axis) / count
            mean = mean * ok.to(p.dtype)
        elif sl.axes:
            mean = _sum_over(p, sl.axes) / count
        else:
            mean = p.clone()       # an unbroadcast seed (a key bias): its section is zero
        return (mean if sl.mask is None else mean * sl.mask.to(p.dtype)), d

    @staticmethod
    def _sharded_mean(sl: SeedLeg) -> bool:
        return sl.shard is not None and 0 in sl.axes

    @torch.no_grad()
    def project_translations(self, params: dict[str, torch.Tensor], skip: torch.Tensor | None = None,
                             context: dict[str, torch.Tensor] | None = None,
                             gains: dict[str, torch.Tensor] | None = None):
        """Subtract each seed's vertical part (its mean over the broadcast axes; φ ⊗ d⁻¹ for a weighted seed): the
        update's vertical part (V t) never enters. ``skip`` (a 0-dim device tensor, 1 = skip) makes it a no-op
        without a host synchronisation. ``context``: parameters a weighted seed reads its gain from, never
        written. ``gains``: whole copies of sharded gains, read instead of their local rows. A sharded executor
        sums the partial means of a gauge's legs over the ranks with one all-reduce (legs on one parameter in turn,
        as unsharded)."""
        readable = {**(context or {}), **params, **(gains or {})}
        for legs in self.seeds:
            for run in _distinct_param_runs(legs):
                found = [self._seed_mean(params[sl.param], sl, readable) for sl in run]
                partial = [i for i, sl in enumerate(run) if self._sharded_mean(sl)]
                if partial:
                    summed = self._reduce(*[found[i][0] for i in partial])
                    for i, mean in zip(partial, summed):
                        found[i] = (mean, found[i][1])
                self._lap("statistics")
                for sl, (mean, d) in zip(run, found):
                    p = slice_part(params[sl.param], 0, sl.part)[0]   # a view: the subtraction lands in the parameter
                    if skip is not None:
                        mean = mean * (1 - skip).to(p.dtype)
                    if d is None:       # both broadcast: p is read and written once, no p-sized temporary
                        p.sub_(mean)
                    else:
                        p.addcdiv_(mean, d, value=-1)
                self._lap("application")

    @torch.no_grad()
    def _canonicalise_translations(self, params, context=None, held: dict | None = None) -> float:
        """Move every additive gauge to its section with the absorbers compensated; returns the largest seed mean.
        ``context``: the model's other parameters, read (never written) by the absorber pass. A weighted gauge
        whose gain has a zero entry is left where it is (its direction d⁻¹ is undefined) and listed in ``held``."""
        worst = 0.0
        readable = {**(context or {}), **params}
        for g, legs in zip(self.add_gauges, self.seeds):
            if any(sl.gain and not bool(self._seed_weight(sl, readable, params[sl.param])[1]) for sl in legs):
                if held is not None:
                    held[g.name] = [0]
                continue
            means = [self._seed_mean(params[sl.param], sl, readable)[0] for sl in legs]
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
            changes = self.plan.additive_changes(g, torch.cat(vec), readable)
            for name, d in changes.items():
                params[name].add_(d.to(device=params[name].device, dtype=params[name].dtype))
        return worst

    # -- multiplicative balance ------------------------------------------------------------------------------------
    @staticmethod
    def _part(p: torch.Tensor, rg: RowGroup) -> tuple[torch.Tensor, int]:
        """The slice of ``p`` the rows live in (a view, so writes land in ``p``) and the rows' axis in it."""
        return slice_part(p, rg.axis, rg.part)

    @classmethod
    def _axis_view(cls, p: torch.Tensor, rg: RowGroup) -> torch.Tensor:
        p, axis = cls._part(p, rg)
        return p.movedim(axis, 0)

    @classmethod
    def _rows(cls, p: torch.Tensor, rg: RowGroup, dtype) -> torch.Tensor:
        """[n, m, rest]: the rows of every copy (rows another rank holds are zero: see RowGroup.present)."""
        view = cls._axis_view(p, rg)
        rest = int(np.prod(view.shape[1:], dtype=np.int64))
        if view.shape[0] == 0:                               # a rank holding no row of the parameter
            return torch.zeros(*rg.rows.shape, rest, dtype=dtype, device=view.device)
        if rg.span is not None:                              # consecutive rows: a view, read in place
            x = view.narrow(0, rg.span, rg.rows.numel())
        else:
            x = view[rg.rows]                                # [n, m, *rest] (n = 0: no copy here)
        x = x.reshape(*rg.rows.shape, rest).to(dtype)
        x = x + rg.offset if rg.offset else x
        return x if rg.present is None else x * rg.present[:, :, None].to(dtype)

    @classmethod
    def _write(cls, p: torch.Tensor, rg: RowGroup, y: torch.Tensor):
        if rg.offset:
            y = y - rg.offset
        view = cls._axis_view(p, rg)
        if rg.span is not None:
            view.narrow(0, rg.span, rg.rows.numel()).copy_(y.reshape(rg.rows.numel(), *view.shape[1:]))
            return
        y = y.reshape((*rg.rows.shape, *view.shape[1:])).to(p.dtype)
        if rg.present is None:
            view[rg.rows] = y
        else:
            view[rg.rows[rg.present]] = y[rg.present]

    @torch.no_grad()
    def balance_stage(self, st: Stage, params: dict[str, torch.Tensor], skip: torch.Tensor | None = None,
                      exact: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Move the stage's stable blocks to their minimum-norm point and hold the others; returns
        (max |A - I|, the [n_blocks] stability mask), both device tensors (the first is None for a per-step GL
        sweep, whose callers never read it).

        ``exact=False`` is the per-step sweep: it only reduces the non-compact part (no orientation conventions,
        and a first-order step instead of the eigensolver for GL blocks); being a deterministic function of the
        point, it keeps two runs that agree in agreement. ``skip`` (0-dim, 1 = skip) writes the rows back
        unchanged, without a host synchronisation."""
        # copies straddling two ranks' shards (RowGroup.present) are summed over the ranks by the gathering path
        if st.m == 1 or (not exact and block_kind(st.kind).scalar_step
                         and all(rg.present is None for rg in st.groups)):
            return self._balance_diagonal(st, params, skip, exact)
        first = params[st.groups[0].param]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        m, nb = st.m, st.n_blocks
        P = torch.zeros(nb, m, m, dtype=dtype, device=first.device)
        Q = torch.zeros_like(P)
        rows = []
        for rg in st.groups:
            x = self._rows(params[rg.param], rg, dtype)
            if rg.present is not None:
                x, = self._reduce(x)            # straddling copies: each rank's rows (zero elsewhere) summed
            rows.append(x)
            if self._adds(rg):
                (Q if rg.dual else P).index_add_(0, rg.blocks, x @ x.mT)
        P, Q = self._reduce(P, Q)
        self._lap("statistics")
        stable = stable_blocks(st.kind, P, Q)
        eye = torch.eye(m, dtype=dtype, device=first.device)
        held = ~stable if skip is None else ~stable | skip.bool()
        # a held block is solved on the identity (finite, and discarded): its own Grams may be singular
        P, Q = torch.where(stable[:, None, None], P, eye), torch.where(stable[:, None, None], Q, eye)
        A, A_dual = _solve(st.kind, P, Q) if exact else _first_order(st.kind, P, Q)
        A = torch.where(held[:, None, None], eye, A)            # the identity maps rows to themselves bit for bit
        A_dual = torch.where(held[:, None, None], eye, A_dual)
        self._lap("solves")
        if not exact:       # no orientation to wait for: each group is moved and written through one reused buffer
            for rg, x in zip(st.groups, rows):
                self._write(params[rg.param], rg, self._moved(A_dual if rg.dual else A, rg, x))
            self._lap("application")
            return None, stable
        moved, moment = [], torch.zeros(nb, m, dtype=dtype, device=first.device)
        for rg, x in zip(st.groups, rows):
            y = (A_dual if rg.dual else A)[rg.blocks] @ x
            moved.append(y)
            if rg.orient and exact and self._adds(rg):
                rest = list(self._axis_view(params[rg.param], rg).shape[1:])
                moment.index_add_(0, rg.blocks, y @ self._probe_rows(rg, rest, y).reshape(-1))
        if exact:
            moment, = self._reduce(moment)
        sign = _orientation(st.kind, moment, exact)   # [nb, m] of ±1
        sign = torch.where(held[:, None], torch.ones_like(sign), sign)
        for rg, y in zip(st.groups, moved):
            if exact:
                y = y * sign[rg.blocks].unsqueeze(-1)
            self._write(params[rg.param], rg, y)
        self._lap("application")
        residual = (sign.unsqueeze(-1) * A - eye).abs().amax() if nb else torch.zeros((), device=first.device)
        return residual, stable

    def _moved(self, A: torch.Tensor, rg: RowGroup, x: torch.Tensor) -> torch.Tensor:
        """A[block] x for every copy of ``rg``, written into a work buffer the executor keeps: a fresh
        parameter-sized result per group costs more in page faults than the product on a CPU (GPT-2 small: ~19,000
        faults, ~100 ms, per GL stage). Valid until the next call."""
        need = x.numel()
        buffer = self._work.get((x.dtype, x.device))
        if buffer is None or buffer.numel() < need:
            buffer = self._work[(x.dtype, x.device)] = torch.empty(need, dtype=x.dtype, device=x.device)
        return torch.matmul(A[rg.blocks], x, out=buffer[:need].view(x.shape))

    def _balance_diagonal(self, st: Stage, params, skip, exact: bool = True):
        """Blocks whose element is a scalar c I: m = 1 blocks (rescales, gains, SwiGLU units), and the per-step
        sweep of blocks whose per-step element is their common scale (a RoPE pair: c⁴ = tr Q / tr P). Row norms by
        reduction, the action by one broadcast multiply per leg; nothing is gathered or scattered."""
        first = params[st.groups[0].param]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        dev, nb = first.device, st.n_blocks
        P = torch.zeros(nb, dtype=dtype, device=dev)
        Q = torch.zeros_like(P)
        sums = []
        for rg in st.groups:
            p, axis = self._part(params[rg.param], rg)
            dims = [d for d in range(p.dim()) if d != axis]
            x = p.to(dtype) + rg.offset if rg.offset else p
            if not dims:
                sq = x.to(dtype).square()
            elif axis == 0:         # rows: a contiguous reduction
                sq = torch.linalg.vector_norm(x, dim=dims, dtype=dtype).square()
            else:
                sq = _column_square_sums(x, axis, dtype)
            if not exact or not rg.orient or not self._adds(rg):
                total = None
            elif dims:
                total = torch.tensordot(x.to(dtype), self._probe_rows(rg, [p.shape[d] for d in dims], P),
                                        dims=(dims, list(range(len(dims)))))
            else:
                total = x.to(dtype) * _probe(1, P)
            if self._adds(rg):        # a block's trace: the squared norms of its m rows
                (Q if rg.dual else P).index_add_(0, rg.blocks, sq[rg.rows].sum(1))
            sums.append(None if total is None else total[rg.rows[:, 0]])
        P, Q = self._reduce(P, Q)
        self._lap("statistics")
        stable = stable_blocks(st.kind, P.view(nb, 1, 1), Q.view(nb, 1, 1))
        one = torch.ones_like(P)
        A, A_dual = (_solve if exact else _first_order)(st.kind, torch.where(stable, P, one).view(nb, 1, 1),
                                                        torch.where(stable, Q, one).view(nb, 1, 1))
        held = ~stable if skip is None else ~stable | skip.bool()
        c = torch.where(held, one, A.view(nb))
        c_dual = torch.where(held, one, A_dual.view(nb))
        moment = torch.zeros_like(P)
        for rg, total in zip(st.groups, sums):
            if total is not None:
                moment.index_add_(0, rg.blocks, (c_dual if rg.dual else c)[rg.blocks] * total)
        if exact:
            moment, = self._reduce(moment)
        sign = _orientation(st.kind, moment.view(nb, 1), exact).view(nb)
        sign = torch.where(held, one, sign)
        self._lap("solves")
        for rg in st.groups:
            p, axis = self._part(params[rg.param], rg)
            factor = torch.ones(p.shape[axis], dtype=dtype, device=dev)
            factor[rg.rows] = ((c_dual if rg.dual else c) * sign)[rg.blocks].unsqueeze(1)   # every row of a block
            shape = [1] * p.dim()
            shape[axis] = -1
            factor = factor.view(shape)        # a factor of exactly 1 (held, skipped) leaves the rows bit for bit
            if rg.offset:
                new = (factor * (p.to(dtype) + rg.offset) - rg.offset).to(p.dtype)
                p.copy_(torch.where(factor == 1, p, new))
            else:
                p.mul_(factor.to(p.dtype))
        self._lap("application")
        residual = (sign * c - 1).abs().amax() if nb else torch.zeros((), device=dev)
        return residual, stable

    # -- rotations (compact blocks) --------------------------------------------------------------------------------
    def _align_rotations(self, work: dict[str, torch.Tensor], context=None) -> dict:
        """Rotate every rotation gauge to its principal axes: R = Uᵀ with M = Σ X Xᵀ over the frame legs
        diagonalised, eigenvalues decreasing, each axis's sign making ⟨row, r⟩ (summed over the frame legs) positive.
        A compact group has no norm to minimise, so this frame is its whole section. Run once, before the other
        sections (the frame Grams are invariant under them, and the rotation commutes with them). A block whose M
        has (nearly) equal eigenvalues has no well-defined frame: it is held where it is and reported."""
        held: dict[str, list[int]] = {}
        for g, frame in self.rotations:
            mats = []
            for b, (_, m) in enumerate(g.blocks):
                M = torch.zeros(m, m, dtype=torch.float64)
                moment = torch.zeros(m, dtype=torch.float64)
                for lg, centred in frame:
                    for pos, loc, _ in groups_of_entries(lg.entries).get(b, []):
                        part, axis = lg.slice_of(work[lg.param])
                        X = part.movedim(axis, 0)
                        if centred:
                            X = X - X.mean(dim=tuple(range(1, X.ndim)), keepdim=True)
                        X = X[torch.as_tensor(pos)[np.argsort(loc)]].reshape(m, -1).cpu()
                        M += X @ X.T
                        moment += X @ _probe(X.shape[1], X)
                R = block_kind(g.blocks[b][0]).frame(M, moment)
                if R is None:
                    held.setdefault(g.name, []).append(b)
                    R = torch.eye(m, dtype=torch.float64)
                mats.append(R)
            try:
                self.plan.act_on(g, "mult", mats, {**(context or {}), **work})
            except ValueError:      # a conjugating gain is zero: the rotation is no symmetry here, hold it
                held[g.name] = list(range(len(g.blocks)))
        return held

    @torch.no_grad()
    def rebalance(self, params: dict[str, torch.Tensor], sweeps: int = 1, skip: torch.Tensor | None = None):
        """``sweeps`` per-step Gauss–Seidel sweeps over the colours (``exact=False``; no host synchronisation).
        Each sweep re-tests every block's stability, so a block held at construction joins the section as soon
        as its orbit is stable."""
        for _ in range(sweeps):
            for st in self.stages:
                self.balance_stage(st, params, skip, exact=False)

    def held_blocks(self, params: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        """Per gauge, the indices of its blocks that are held (unstable orbit) at ``params`` (synchronises the
        host)."""
        stability = []
        for st in self.stages:          # a per-step sweep on copies: only the masks are wanted
            work = {rg.param: params[rg.param].detach().clone() for rg in st.groups}
            _, stable = self.balance_stage(st, work, exact=False)
            stability.append(stable)
        return self._count_held(stability)

    def _count_held(self, stability: list[torch.Tensor]) -> dict[str, list[int]]:
        held: dict[str, list[int]] = {}
        for st, stable in zip(self.stages, stability):
            for (name, block), ok in zip(st.owners, stable.reshape(-1).tolist()):
                if not ok:
                    held.setdefault(name, []).append(block)
        return {name: sorted(blocks) for name, blocks in held.items()}

    @torch.no_grad()
    def canonicalise(self, params: dict[str, torch.Tensor], tol: float | None = None, max_sweeps: int = 500,
                     context: dict[str, torch.Tensor] | None = None) -> dict:
        """Move to the joint section, iterating to convergence; returns {sweeps, residual, held}.

        Transactional: the sweeps run in float64 on copies, and the parameters are written once, only if every
        result is finite and no non-zero parameter's norm moved by more than ``MAX_NORM_RATIO`` either way;
        otherwise :class:`CanonicalisationError` names the parameter and nothing is written (the norms are compared
        after the translations' linear sections, which may legitimately zero a bias that another one absorbs).
        ``context`` holds the model's other parameters (frozen, or owned by no optimizer) that the translations'
        absorber pass reads but never writes. ``held`` lists, per gauge, its blocks on unstable orbits, which were
        left where they are.
        """
        for name, p in params.items():
            if p.is_meta:
                raise CanonicalisationError(f"parameter {name} is on the meta device: materialise the model "
                                            "(to_empty() and initialise it) before building the optimizer")
            if not bool(torch.isfinite(p).all()):
                raise CanonicalisationError(f"parameter {name} holds NaN or inf: the canonical section is "
                                            "undefined there (nothing was changed)")
        work = {k: v.detach().to(torch.float64, copy=True) for k, v in params.items()}
        start_norms = {k: float(v.norm()) for k, v in work.items()}
        rotations_held = self._align_rotations(work, context)
        tol = 1e-12 if tol is None else tol
        residual = float("inf")
        report = None
        history: list[float] = []
        norms = None
        translations_held: dict[str, list[int]] = {}
        for sweep in range(1, max_sweeps + 1):
            residual = self._canonicalise_translations(work, context, translations_held)
            if norms is None:       # the guard judges the multiplicative moves (a translation section may zero a bias)
                norms = {k: float(v.norm()) for k, v in work.items()}
            stability = []
            for st in self.stages:
                res, stable = self.balance_stage(st, work)
                residual = max(residual, float(res))
                stability.append(stable)
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
        report["held"] = {**self._count_held(stability), **rotations_held, **translations_held}
        for name, p in params.items():
            new = work[name]
            if not bool(torch.isfinite(new).all()):
                raise CanonicalisationError(f"the canonical section of {name} is not finite (nothing was changed)")
            before, after = norms[name], float(new.norm())
            # a bias that a translation's section zeroed (a key bias without RoPE) is judged as zero: scaling its
            # rounding residue (1e-16 to 1e-14 of where it started) is no collapse
            zeroed = before <= 1e-10 * start_norms[name]
            if before > 0 and not zeroed and not 1 / MAX_NORM_RATIO <= after / before <= MAX_NORM_RATIO:
                raise CanonicalisationError(
                    f"the canonical section would scale {name} by {after / before:.1e} (norm {before:.3e} -> "
                    f"{after:.3e}): a block of it is too close to an unstable orbit to balance safely (nothing "
                    "was changed); pass canonicalise=False to train from where it is")
        for name, p in params.items():
            p.detach().copy_(work[name])
        return report


def _distinct_param_runs(legs: list[SeedLeg]) -> list[list[SeedLeg]]:
    """The legs in order, cut wherever a parameter comes back or a gain read is one the run writes (a mean must be
    read after the earlier subtraction)."""
    runs: list[list[SeedLeg]] = []
    for sl in legs:
        if not runs or any(o.param in (sl.param, sl.gain) or sl.param == o.gain for o in runs[-1]):
            runs.append([])
        runs[-1].append(sl)
    return runs


def _sum_over(p: torch.Tensor, axes: tuple) -> torch.Tensor:
    """Σ of p over ``axes`` (kept as size-1 dims). One axis of a matrix is summed as a matrix-vector product with a
    ones vector: torch's reduction along the leading axis of a contiguous matrix takes twice as long."""
    if p.dim() == 2 and len(axes) == 1:
        ones = torch.ones(p.shape[axes[0]], dtype=p.dtype, device=p.device)
        return (p.mT.mv(ones) if axes[0] == 0 else p.mv(ones)).unsqueeze(axes[0])
    return p.sum(dim=axes, keepdim=True)


# entries per chunk of _column_square_sums: the squares stay in the L2 cache
_CHUNK = 1 << 18


def _column_square_sums(x: torch.Tensor, axis: int, dtype) -> torch.Tensor:
    """Σ x² over every axis but ``axis`` ([x.shape[axis]], in ``dtype``). torch's strided norm along a leading axis is
    ~40x slower than square-and-sum, and squaring a large matrix whole costs more in page faults than the sum; so the
    squares are taken over chunks of the leading rows into one reused buffer and summed by a matrix-vector product
    (under torch.compile the plain expression, which inductor fuses into one loop without the temporary)."""
    lead = x.movedim(axis, -1)
    lead = lead.reshape(-1, lead.shape[-1])
    n, width = lead.shape
    if n * width <= _CHUNK or not lead.is_contiguous() or torch.compiler.is_compiling():
        return lead.to(dtype).square().sum(dim=0)
    rows = max(1, _CHUNK // width)
    buffer = torch.empty(rows, width, dtype=dtype, device=x.device)
    ones = torch.ones(rows, dtype=dtype, device=x.device)
    out = torch.zeros(width, dtype=dtype, device=x.device)
    for start in range(0, n, rows):
        chunk = lead[start:start + rows]
        square = buffer[:len(chunk)]
        if chunk.dtype == dtype:
            torch.mul(chunk, chunk, out=square)        # one read of the chunk, the squares written to the cache
        else:                                          # converted before squaring (a bfloat16 parameter)
            square.copy_(chunk).mul_(square)
        out.addmv_(square.mT, ones[:len(chunk)])
    return out


def _refuse_sharded_part(param: str, part: tuple):
    if any(k == 0 for k, _ in part):
        raise NotImplementedError(f"{param}: a leg on one slice of dim 0 (a stacked expert) of a parameter sharded "
                                  "along dim 0 is not supported yet")


def _solve(kind: str, P: torch.Tensor, Q: torch.Tensor):
    """The balancing element A of each block of ``kind`` and the map A^-T applied to dual rows (gaugec.groups)."""
    return block_kind(kind).solve(P, Q)


def _first_order(kind: str, P: torch.Tensor, Q: torch.Tensor):
    """The per-step balancing element, for a block near balance (gaugec.groups: no eigensolver)."""
    return block_kind(kind).first_order(P, Q)


def stable_blocks(kind: str, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """[n_blocks] bool: the block's orbit is closed with a finite stabiliser, so its minimum-norm point exists and
    moves no live row to zero or infinity (docs/ddc.md, "Stable and unstable orbits"; the test per kind:
    gaugec.groups). It is G-invariant, so it gives the same answer at θ and at g·θ."""
    return block_kind(kind).stable(P, Q)


def _orientation(kind: str, moment: torch.Tensor, exact: bool) -> torch.Tensor:
    """±1 per row fixing the compact part (gaugec.groups); the per-step sweep keeps every sign."""
    return block_kind(kind).orientation(moment) if exact else torch.ones_like(moment)


def _probe(k: int, like: torch.Tensor) -> torch.Tensor:
    """A fixed non-constant vector r (r_j = cos(πφ j + ½)): ⟨row, r⟩ is odd in the row and, unlike Σ x, does not
    vanish on the zero-mean sections of the translations."""
    j = torch.arange(k, dtype=like.dtype, device=like.device)
    return torch.cos(j * (math.pi * 1.618033988749895) + 0.5)
