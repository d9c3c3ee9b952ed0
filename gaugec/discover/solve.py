"""Turn the rules' constraints into gauges.

1. Ties from contractions (q.k: A with A^-T) join coordinates in a union-find with parity (parity 1 = dual).
   A coordinate tied to its own dual would need A = A^-T (an orthogonal group); it is refused for now.
2. Blocks: the coordinates of a GL seed start as one block; every fibre F a rule imposed (a tensor slice the action
   must not leave) refines blocks into B ∩ F and B \\ F. Two coordinates share a final block iff they start
   together and lie in exactly the same fibres.
3. Kinds (:mod:`gaugec.groups`): a block is GL(m) unless a rule restricted it: "pos" (R+, ReLU), "scalar" (R*,
   elementwise products and gains) on single coordinates, "rot2" (a I + b J, the RoPE commutant) on a rotary pair,
   "scale" (c I, a norm at eps = 0) or "orth" (O(m), a rotation passing an RMS norm) on a normalised vector.
4. Kills: a block with a killed coordinate is fixed at the identity; a parameter whose uses are not all covered by
   the gauge's legs (tied weights) kills the blocks that move it.
5. Components of probes joined by ties are the gauge instances; each gets a family from what its rules saw
   (:mod:`gaugec.discover.families`), and its legs the (block, local index, parity) of every index they move.
"""
from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from gaugec.arrays import distinct
from gaugec.discover.engine import Engine
from gaugec.discover.families import additive_family, block_families
from gaugec.discover.registry import TIED_USES
from gaugec.discover.state import unique_rows
from gaugec.groups import BLOCK_KINDS
from gaugec.plan.gauge import Gauge, Leg
from gaugec.prove import Proof


class UnionFind:
    """Union-find with parity (parity 1 = the dual, A^-T), for the few probes (the coordinates, millions on a
    full-size model, go through :func:`classes_with_parity`)."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.parity = [0] * n    # parity relative to parent

    def find(self, x: int) -> tuple[int, int]:
        path = []
        p = 0
        while self.parent[x] != x:
            path.append(x)
            p ^= self.parity[x]
            x = self.parent[x]
        root = x
        acc = p
        for node in path:          # path compression, keeping each node's parity to the root
            nxt = self.parity[node]
            self.parent[node] = root
            self.parity[node] = acc
            acc ^= nxt
        return root, p

    def union(self, a: int, b: int, parity: int):
        ra, pa = self.find(a)
        rb, pb = self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.parity[rb] = pa ^ pb ^ parity


def classes_with_parity(n: int, a: np.ndarray, b: np.ndarray, par: np.ndarray) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The classes of ``n`` elements joined by ties ``a[i] ~ b[i]`` with parity ``par[i]`` (1: b is a's dual), as
    (root of each element: the least of its class; parity to that root; the roots whose ties contradict, a
    coordinate tied to its own dual).

    Each element x is split into x⁺ and x⁻ (itself and its dual); a tie of parity p joins (a⁺, b^p) and
    (a⁻, b^(1-p)). Components of that doubled graph are found by min-label propagation with pointer jumping (all in
    numpy); x's component holds its root r's r⁺ (parity 0) or r⁻ (parity 1), and x⁺ meeting x⁻ is a contradiction."""
    roots = np.arange(n, dtype=np.int64)
    parity = np.zeros(n, dtype=np.int8)
    if not len(a):
        return roots, parity, np.zeros(0, dtype=np.int64)
    ids = distinct(np.concatenate([a, b]))
    ia, ib = np.searchsorted(ids, a), np.searchsorted(ids, b)
    u = np.concatenate([2 * ia, 2 * ia + 1])
    v = np.concatenate([2 * ib + par, 2 * ib + 1 - par])
    lab = np.arange(2 * len(ids), dtype=np.int64)
    while True:
        low = np.minimum(lab[u], lab[v])
        new = lab.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while True:                         # pointer jumping: every label to its label's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            break
        lab = new
    plus, minus = lab[0::2], lab[1::2]
    roots[ids] = ids[np.minimum(plus, minus) // 2]
    parity[ids] = plus & 1
    return roots, parity, distinct(roots[ids[plus == minus]])


@dataclasses.dataclass
class Refusal:
    where: str
    probe: str
    reason: str


class Reasons:
    """Why coordinates or blocks are fixed: a list of (reason, node) addressed by integer codes (first one wins)."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def code(self, why: str, where: str = "") -> int:
        self.items.append((why, where))
        return len(self.items) - 1


@dataclasses.dataclass
class Blocks:
    """The solver's block table: every coordinate's block, local index and parity; every block's kind, size, tags
    and the code of the reason it is fixed (-1: alive)."""

    block_of_coord: np.ndarray
    local_of_coord: np.ndarray
    parity: np.ndarray
    kind: np.ndarray          # [n_blocks] kind names (gaugec.groups)
    size: np.ndarray
    dead: np.ndarray
    tags: dict[str, np.ndarray]
    probe_comp: np.ndarray    # component id of each probe (probes joined by contraction ties)


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of x + salt: a 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def solve(engine: Engine) -> tuple[list[Gauge], list[Refusal]]:
    """The five steps of the module docstring; returns the gauges (unnamed, proofs not yet checked) and the
    refusals."""
    reasons = Reasons()
    blocks = _block_table(engine, reasons)
    uses = engine.param_uses()
    gauges, refusals = _multiplicative_gauges(engine, blocks, reasons, uses)
    more, more_refusals = _additive_gauges(engine, uses)
    if os.environ.get("GAUGEC_DEBUG"):
        for p in engine.probes:
            print("probe", p.id, p.describe, p.tags, p.refusals[:3])
    return gauges + more, refusals + more_refusals


def _block_table(engine: Engine, reasons: Reasons) -> Blocks:
    cons = engine.cons
    n = cons.n_coords
    # the probes allocate their coordinates one after the other (Constraints.new_coords): each coordinate's probe
    # and seed kind by runs
    counts = np.array([count for _, count, _, _ in cons.ranges], dtype=np.int64)
    coord_probe = np.repeat(np.array([pid for _, _, pid, _ in cons.ranges], dtype=np.int64), counts)
    seed_scalar = np.repeat(np.array([kind == "scalar" for _, _, _, kind in cons.ranges], dtype=bool), counts)
    ties, probe_uf, kills = _contraction_ties(cons, coord_probe, len(engine.probes))
    ties += _tie_scalars(cons, seed_scalar, coord_probe)
    a, b, par = (np.concatenate([t[i] for t in ties]).astype(np.int64) if ties else np.zeros(0, dtype=np.int64)
                 for i in range(3))
    roots, parity, conflict = classes_with_parity(n, a, b, par)
    if conflict.size:
        kills.append((conflict, "a coordinate contracted with itself (A = A^-T): orthogonal groups are not derived "
                                "yet", ""))
    root_kill = _root_kills(kills, roots, n, reasons)
    probe_comp = np.array([probe_uf.find(p)[0] for p in range(len(engine.probes))], dtype=np.int64)
    # a root's start component is its own probe's (ties join the probes of a class into one component)
    return _refine_blocks(cons, roots, parity, coord_probe, seed_scalar, root_kill, reasons, probe_comp)


def _tie_scalars(cons, seed_scalar: np.ndarray, coord_probe: np.ndarray) -> list[tuple]:
    """Diagonal scalars that only move together become one scalar (a *tied scalar*, one coordinate):

    * a rotary pair whose two coordinates are diagonal scalars (a gain reaching RoPE: a QK-norm gain) commutes with
      the rotation only as c I on the pair, and the pair needs no rot2 block;
    * a normalised vector (a norm at eps = 0, "scale") whose coordinates are all diagonal scalars of one probe (a
      post-LN stream's gain, carried through the residual sum into the next norm) passes only as c I: the per-channel
      gain becomes the common scale of the whole vector (``layernorm_scale``, ``rmsnorm_scale``).

    Returns the ties (a, b, parity 0) as arrays."""
    ties = []
    for kind, arr in cons.kinds:
        if kind == "rot2" and len(arr):
            pairs = arr.reshape(-1, 2)
            pairs = pairs[seed_scalar[pairs].all(1)]
            ties.append((pairs[:, 0], pairs[:, 1], np.zeros(len(pairs), dtype=np.int64)))
        elif kind == "scale" and arr.size:
            rows = arr[seed_scalar[arr].all(1) & (coord_probe[arr] == coord_probe[arr[:, :1]]).all(1)]
            first = np.broadcast_to(rows[:, :1], rows[:, 1:].shape).reshape(-1)
            ties.append((first, rows[:, 1:].reshape(-1), np.zeros(len(first), dtype=np.int64)))
    return ties


def _contraction_ties(cons, coord_probe: np.ndarray, n_probes: int):
    """1. Ties from contractions: A on one factor, A^-T on the other; the probes involved form one gauge instance.
    Returns the coordinate ties (a, b, parity 1), the probe union-find and the kills found on the way."""
    ties = []
    probe_uf = UnionFind(n_probes)
    kills = list(cons.kills)
    killed = np.zeros(cons.n_coords + 1, dtype=bool)      # a killed coordinate acts on nothing: it pairs with nothing
    for coords, _, _ in cons.kills:
        killed[coords] = True
    killed[-1] = True
    for node_name, sides in cons.half_edges.items():
        merged = {}
        for side in ("a", "b"):
            arrs = [np.where(killed[C], -1, C) for _, C in sides.get(side, [])]
            if not arrs:
                continue
            shape = np.broadcast_shapes(*[a.shape for a in arrs])
            m = np.full(shape, -1, dtype=np.int64)
            for a in arrs:
                a = np.broadcast_to(a, shape)
                both = (a >= 0) & (m >= 0)
                if both.any():   # two candidate groups on one factor: which pairs with the other side is ambiguous
                    kills.append((np.concatenate([a[both], m[both]]), "two candidate groups reach one factor of a "
                                                                       "contraction", node_name))
                m = np.where(a >= 0, a, m)
            merged[side] = m
        if len(merged) < 2:
            for m in merged.values():
                kills.append((m, "the other factor of a contraction carries no matching group", node_name))
            continue
        a, b = np.broadcast_arrays(merged["a"], merged["b"])
        pairs = unique_rows(np.stack([a.reshape(-1), b.reshape(-1)], 1))
        both = (pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)
        ties.append((pairs[both, 0], pairs[both, 1], np.ones(int(both.sum()), dtype=np.int64)))
        for pa, pb in unique_rows(coord_probe[pairs[both]]).tolist():
            probe_uf.union(pa, pb, 0)
        kills.append((pairs[~both].max(axis=1), "one factor of a contraction is fixed", node_name))
    return ties, probe_uf, kills


def _root_kills(kills, roots: np.ndarray, n: int, reasons: Reasons) -> np.ndarray:
    """The reason code that fixes each root (-1: none); the first reason wins."""
    root_kill = np.full(n, -1, dtype=np.int32)
    for coords, why, where in kills:
        coords = np.asarray(coords).reshape(-1)
        coords = coords[coords >= 0]
        if not coords.size:
            continue
        code = reasons.code(why, where)
        rs = roots[coords]
        rs = rs[root_kill[rs] < 0]
        root_kill[rs] = code
    return root_kill


def _refine_blocks(cons, roots, parity, coord_probe, seed_scalar, root_kill, reasons: Reasons, probe_comp) -> Blocks:
    """2.–4. A root's block is fixed by its start component (the GL seeds it came from, joined by ties), the set of
    fibres it lies in (hashed), and whether a kind made it a singleton; then kinds, and why a block is fixed."""
    n = cons.n_coords
    acc, single, flag, rot_order, tied_rows = _fibre_keys(cons, roots, seed_scalar)
    uroots = np.flatnonzero(roots == np.arange(n, dtype=roots.dtype))   # a class's root: the least of it, its own
    # a singleton root is a block of its own; the others share a block when they share (start, fibres)
    alone = single[uroots]
    grouped = uroots[~alone]
    g_start, g_acc = probe_comp[coord_probe[grouped]], acc[grouped]
    with np.errstate(over="ignore"):        # acc is a random hash already: an odd multiple of start spreads it
        key = g_acc ^ (g_start.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    rep = first[inv]
    if not (np.array_equal(g_start[rep], g_start) and np.array_equal(g_acc[rep], g_acc)):   # a key collision
        _, inv = np.unique(np.stack([g_start, g_acc.view(np.int64)], 1), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    n_grouped = int(inv.max()) + 1 if len(inv) else 0
    block_of_u = np.empty(len(uroots), dtype=np.int64)
    block_of_u[~alone] = inv
    block_of_u[alone] = n_grouped + np.arange(int(alone.sum()))
    nb = n_grouped + int(alone.sum())
    block_of_root = np.full(n, -1, dtype=np.int64)
    block_of_root[uroots] = block_of_u
    size = np.bincount(block_of_u, minlength=nb)
    has = {}
    for k, f in flag.items():
        has[k] = np.zeros(nb, dtype=bool)
        has[k][block_of_u[f[uroots]]] = True

    # 3. kinds (a restricted singleton takes the restriction lying within all the others it met; a block tied to one
    # scale by a normalisation "scale" (one coordinate: R+); a rotary pair "rot2"; an unrestricted block GL, GL(1)
    # being R* "scalar"), and why a block is fixed (-1: alive)
    scale = has["scale"] & (size > 1)
    orth = has["orth"] & (size > 1) & ~has["scale"] & ~has["orth1"] & ~has["shear1"]
    orth1 = has["orth1"] & (size > 2) & ~has["scale"] & ~has["orth"] & ~has["shear1"]
    shear1 = has["shear1"] & (size > 1) & ~has["scale"] & ~has["orth"] & ~has["orth1"]
    has["pos"] = has["pos"] | (has["scale"] & (size == 1))
    kind = np.where(size > 1, "gl", "scalar").astype(f"<U{max(len(k) for k in BLOCK_KINDS)}")
    singles = [k for k, bk in BLOCK_KINDS.items() if bk.singleton]
    restricted = np.zeros(nb, dtype=bool)
    chosen = np.zeros(nb, dtype=bool)
    for k in singles:
        restricted |= has[k]
        inside_others = np.ones(nb, dtype=bool)
        for j in singles:
            if j != k and j not in BLOCK_KINDS[k].within:
                inside_others &= ~has[j]
        pick = (size == 1) & has[k] & inside_others
        kind[pick] = k
        chosen |= pick
    kind[scale] = "scale"
    kind[orth] = "orth"
    kind[orth1] = "orth1"
    kind[shear1] = "shear1"
    # a rotary pair inside a vector an RMS norm normalises after RoPE (Llama-4's QK L2 norm): the pair's commutant
    # a I + b J meets O(m) in the pair's rotation, SO(2), an orthogonal block of two
    pair_rotation = has["rot2"] & orth & (size == 2)
    kind[has["rot2"] & ~pair_rotation] = "rot2"
    dead = np.full(nb, -1, dtype=np.int64)
    rotation = has["orth"] | has["orth1"] | has["shear1"]
    dead[rotation & (restricted | (has["rot2"] & ~pair_rotation) | has["scale"] | ~(orth | orth1 | shear1))] = \
        reasons.code("a rotation or shear block that other ops restrict, that two different normalisations tie, or "
                     "too small to move continuously")
    dead[has["rot2"] & ((size != 2) | restricted | has["scale"])] = \
        reasons.code("a rotary pair that other ops split or restrict")
    dead[(size > 1) & restricted & ~has["rot2"] & ~scale & ~rotation & (dead < 0)] = \
        reasons.code("a block wider than one coordinate with a diagonal restriction")
    dead[(size == 1) & restricted & ~chosen & (dead < 0)] = \
        reasons.code("restrictions to kinds with no common subgroup")
    for tie, rows in tied_rows:  # one normalised vector moved by several blocks: they would need one common map,
        rows_blocks = block_of_root[rows]
        split = distinct(rows_blocks[(rows_blocks != rows_blocks[:, :1]).any(1)])
        if tie == "orth" and (kind[split] == "orth").all():
            continue                 # but a direct sum of orthogonal blocks is orthogonal: it keeps the RMS
        if split.size:
            dead[split[dead[split] < 0]] = reasons.code("a normalised vector moved by several independent blocks "
                                                        "(one common scale or rotation across blocks is not derived "
                                                        "yet)")
    killed_roots = uroots[root_kill[uroots] >= 0]
    killed_blocks, kill_codes = block_of_root[killed_roots], root_kill[killed_roots]
    fresh = dead[killed_blocks] < 0
    dead[killed_blocks[fresh]] = kill_codes[fresh]

    local_of_root = _local_indices(uroots, block_of_u, block_of_root, size, kind, dead, rot_order, n)
    block_of_coord = block_of_root[roots]
    tags = {}
    for t, arrs in cons.tags.items():
        mask = np.zeros(nb, dtype=bool)
        if arrs:
            mask[block_of_coord[np.concatenate(arrs)]] = True
        tags[t] = mask
    return Blocks(block_of_coord, local_of_root[roots], parity, kind, size, dead, tags, probe_comp)


def _fibre_keys(cons, roots, seed_scalar):
    """Per root: a hash of the fibres (and rotary pairs) it lies in, whether it is a singleton, and which
    restrictions it met; and each rotary pair's orientation ([k, 2] roots: first, second)."""
    n = cons.n_coords
    acc = np.zeros(n, dtype=np.uint64)
    rng = np.random.default_rng(20261123)
    with np.errstate(over="ignore"):
        for fib in cons.fibres:
            acc[distinct(roots[fib])] += rng.integers(1, 2 ** 63, dtype=np.int64).astype(np.uint64)
    single = np.zeros(n, dtype=bool)
    flag = {k: np.zeros(n, dtype=bool) for k, bk in BLOCK_KINDS.items() if bk.singleton}
    flag["rot2"] = np.zeros(n, dtype=bool)
    flag["scale"] = np.zeros(n, dtype=bool)
    flag["orth"] = np.zeros(n, dtype=bool)
    flag["orth1"] = np.zeros(n, dtype=bool)
    flag["shear1"] = np.zeros(n, dtype=bool)
    tied_rows = []
    rot_pairs = []          # every rotary pair of roots (first, second), in the order the rules met them
    # a rotary pair inside a vector a norm at eps 0 ties to one scale c I needs no rotation block: c I commutes with
    # the rotation (a QK norm after RoPE)
    in_scale_row = np.zeros(n, dtype=bool)
    for kind, arr in cons.kinds:
        if kind == "scale":
            in_scale_row[roots[arr]] = True
    for kind, arr in cons.kinds:
        if kind == "rot2":
            rp = roots[arr.reshape(-1, 2)]
            # pairs tied into one scalar, or inside one scale, need no rotation block
            rp = rp[(rp[:, 0] != rp[:, 1]) & ~in_scale_row[rp].all(1)]
            if not len(rp):
                continue
            lo, hi = rp.min(1), rp.max(1)
            h = _mix(lo * n + hi, 7)
            with np.errstate(over="ignore"):
                np.add.at(acc, rp[:, 0], h)
                np.add.at(acc, rp[:, 1], h)
            flag["rot2"][rp.reshape(-1)] = True
            rot_pairs.append(rp)
        elif kind in ("scale", "orth", "orth1", "shear1"):
            rr = roots[arr]
            flag[kind][rr.reshape(-1)] = True
            tied_rows.append((kind, rr))
        else:
            if kind not in flag:
                raise ValueError(f"a rule restricted coordinates to {kind!r}, which is not a singleton kind of "
                                 f"gaugec.groups ({', '.join(k for k in flag if k != 'rot2')})")
            rs = roots[arr]
            single[rs] = True
            flag[kind][rs] = True
    rs = roots[seed_scalar]
    single[rs] = True
    flag["scalar"][rs] = True
    rot_pairs = np.concatenate(rot_pairs) if rot_pairs else np.zeros((0, 2), dtype=np.int64)
    # one orientation per pair, the first met: (a, b) and (b, a) are one pair
    _, first = np.unique(rot_pairs.min(1) * n + rot_pairs.max(1), return_index=True)
    rot_order = rot_pairs[first]
    return acc, single, flag, rot_order, tied_rows


def _local_indices(uroots, block_of_u, block_of_root, size, kind, dead, rot_order, n) -> np.ndarray:
    """Each root's index inside its block (rotary pairs in their rotation's orientation)."""
    local_u = np.zeros(len(uroots), dtype=np.int64)          # a singleton block's one root: index 0
    multi = np.flatnonzero(size[block_of_u] > 1)
    order = multi[np.argsort(block_of_u[multi], kind="stable")]   # wider blocks' roots, by block, in root order
    starts = np.concatenate([[0], np.cumsum(np.where(size > 1, size, 0))[:-1]])
    local_u[order] = np.arange(len(order)) - starts[block_of_u[order]]
    local_of_root = np.full(n, -1, dtype=np.int64)
    local_of_root[uroots] = local_u
    # a live rotary block is one oriented pair (first, second): local 0 and 1
    f, sec = rot_order[:, 0], rot_order[:, 1]
    b = block_of_root[f]
    live_pair = (b == block_of_root[sec]) & (kind[b] == "rot2") & (dead[b] < 0)
    local_of_root[f[live_pair]], local_of_root[sec[live_pair]] = 0, 1
    return local_of_root


def _multiplicative_gauges(engine: Engine, bt: Blocks, reasons: Reasons, uses: dict[str, dict[str, tuple]]) \
        -> tuple[list[Gauge], list[Refusal]]:
    """5. Components of probes: one gauge instance each, split by family; tied parameters (``uses``: every node a
    parameter feeds) fix their blocks."""
    comps: dict[int, list] = {}
    for p in engine.probes:
        if p.kind == "mult":
            comps.setdefault(int(bt.probe_comp[p.id]), []).append(p)
    gauges: list[Gauge] = []
    refusals: list[Refusal] = []
    slot = np.full(len(bt.size), -1, dtype=np.int64)    # block -> index within the gauge being built
    for probes in comps.values():
        legs = [lg for p in probes for lg in p.legs]
        _kill_shared_parameters(legs, uses, bt, reasons, engine, probes[0])
        coords = np.concatenate([np.arange(p.coord_base, p.coord_base + p.coord_count) for p in probes])
        bids = distinct(bt.block_of_coord[coords])
        for code in distinct(bt.dead[bids][bt.dead[bids] >= 0]):
            why, where = reasons.items[code]
            refusals.append(Refusal(where or probes[0].node.name, probes[0].describe, why))
        live = bids[bt.dead[bids] < 0]
        if not len(live):
            continue
        # families are per block: a fused QKV probe holds Q/K blocks and V/O blocks
        tags = set().union(*[p.tags for p in probes])
        fam = block_families(live, bt.tags, tags)
        families = list(dict.fromkeys(fam.tolist()))
        for fam_name in families:
            fam_blocks = live[fam == fam_name]   # sorted, as live is
            if len(families) == 1:
                cites = sorted({(lid, nd) for p in probes for lid, nd, _ in p.citations})
            else:   # only the lemmas applied where this family's coordinates went
                mine = coords[np.isin(bt.block_of_coord[coords], fam_blocks)]
                cites = sorted({(lid, nd) for p in probes for lid, nd, cs in p.citations
                                if cs is None or any(np.isin(c, mine).any() for c in cs)})
            slot[fam_blocks] = np.arange(len(fam_blocks))
            gauges.append(Gauge("", fam_name, "mult", list(zip(bt.kind[fam_blocks].tolist(),
                                                                bt.size[fam_blocks].tolist())),
                                _plan_legs(legs, slot, bt), proof=Proof(cites),
                                description=[p.describe for p in probes]))
            slot[fam_blocks] = -1
    return _distinct(gauges), refusals


def _distinct(gauges: list[Gauge]) -> list[Gauge]:
    """One gauge per group action: probes seeded on two writers of one stream (a token and a position embedding)
    each move the other and find the same gauge. Two gauges are the same when they move the same positions of the
    same parameters, in the same roles, with the same partition into blocks of the same kinds. The positions are
    compared only between gauges that agree on everything else (most gauges meet no such twin)."""
    buckets: dict[tuple, list[tuple]] = {}
    out = []
    for g in gauges:
        legs = sorted(g.legs, key=lambda lg: (lg.param, lg.role, lg.axis, lg.part, lg.node))
        outline = (g.family, tuple(sorted(collections.Counter(g.blocks).items())),
                   tuple(sorted({(lg.param, lg.role, lg.axis, lg.part, lg.conj, lg.offset) for lg in legs})))
        twins = buckets.get(outline)
        if twins is None:
            buckets[outline] = [(legs, None)]
            out.append(g)
            continue
        mine = _positions(legs)
        for i, (other, positions) in enumerate(twins):
            if positions is None:
                positions = _positions(other)
                twins[i] = (other, positions)
            if positions == mine:
                break
        else:
            twins.append((legs, mine))
            out.append(g)
    return out


def _positions(legs) -> frozenset:
    """What each leg moves, with the gauge's blocks renumbered by first appearance (two probes' numberings of one
    partition compare equal)."""
    blocks = [lg.entries[:, 0] if lg.entries is not None else np.zeros(0, dtype=np.int64) for lg in legs]
    flat = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    ids, first, inv = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(ids))
    canon = np.where(flat >= 0, rank[inv.reshape(-1)], -1)
    cuts = np.cumsum([len(b) for b in blocks])[:-1]
    return frozenset((lg.param, lg.role, lg.axis, lg.part, lg.conj, lg.offset, c.tobytes())
                     for lg, c in zip(legs, np.split(canon, cuts)))


def _kill_shared_parameters(legs, uses, bt: Blocks, reasons: Reasons, engine: Engine, probe):
    """Tied / shared parameters: every use must be a leg, be made whole by a registered resolver (its extra legs
    join ``legs``, its lemma ``probe``'s citations), or the blocks that move the parameter are fixed; and no entry
    may be moved by two different legs (a tied embedding read back as the head: A on its columns as a writer, A^-1
    as a reader, which only an orthogonal A satisfies)."""
    _kill_doubly_moved(legs, bt, reasons)
    nodes = None
    for param in sorted({lg.param for lg in legs}):
        missing = _uncovered_uses(uses.get(param, {}), [lg for lg in legs if lg.param == param])
        if missing and TIED_USES:
            nodes = nodes or {n.name: n for n in engine.topo}
            kind_of = lambda c: bt.kind[bt.block_of_coord[c]]    # noqa: E731
            for name in sorted(missing):
                for resolve in TIED_USES:
                    extra = resolve(engine, param, nodes[name], [lg for lg in legs if lg.param == param], kind_of)
                    if extra:
                        legs.extend(extra)
                        probe.citations.extend((lid, name, None) for lid in resolve.lemmas)
                        missing = missing - {name}
                        break
        if not missing:
            continue
        code = reasons.code(f"parameter {param} is also used where the group does not act (tied or shared)",
                            sorted(missing)[0])
        for lg in legs:
            if lg.param == param and lg.coords is not None:
                bs = bt.block_of_coord[lg.coords[lg.coords >= 0]]
                bt.dead[bs[bt.dead[bs] < 0]] = code


def _uncovered_uses(uses: dict[str, tuple], legs) -> set[str]:
    """The uses of a parameter that none of ``legs`` sits at and whose slice meets a slice the legs move (an
    expert's ``W[e]`` read elsewhere does not touch the legs on ``W[e']``)."""
    def disjoint(a: tuple, b: tuple) -> bool:
        return any(k == k2 and i != i2 for k, i in a for k2, i2 in b)

    at = {lg.node for lg in legs}
    return {n for n, part in uses.items() if n not in at and not all(disjoint(part, lg.part) for lg in legs)}


def _kill_doubly_moved(legs, bt: Blocks, reasons: Reasons):
    by_axis: dict[tuple, list] = {}
    for lg in legs:
        if lg.coords is not None:
            by_axis.setdefault((lg.param, lg.axis, lg.part), []).append(lg)
    for (param, _, _), group in by_axis.items():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                both = (a.coords >= 0) & (b.coords >= 0)
                if not both.any() or (a.role == b.role and a.offset == b.offset and a.conj == b.conj
                                      and np.array_equal(a.coords[both], b.coords[both])
                                      and (not a.conj or np.array_equal(a.conj_index, b.conj_index))):
                    continue
                code = reasons.code(f"parameter {param} is moved by two legs along one axis (a tied weight used "
                                    "on both sides of the map would need A = A^-T: orthogonal groups are not derived "
                                    "yet)", b.node)
                bs = bt.block_of_coord[np.concatenate([a.coords[both], b.coords[both]])]
                bt.dead[bs[bt.dead[bs] < 0]] = code


def _plan_legs(legs, slot: np.ndarray, bt: Blocks) -> list[Leg]:
    """The probe legs as plan legs of one family's gauge: coordinates become (block, local, parity) entries, legs
    that move none of the family's blocks are dropped. ``slot``: each block's index within the gauge (-1: not
    this gauge's)."""
    out = []
    for lg in legs:
        entries = None
        if lg.coords is not None:
            entries = _entries(lg.coords, slot, bt)
            if not (entries[:, 0] >= 0).any():
                continue
        out.append(dataclasses.replace(lg, entries=entries, coords=None, axes=tuple(lg.axes)))
    return out


def _entries(coords: np.ndarray, slot: np.ndarray, bt: Blocks) -> np.ndarray:
    """[len(coords), 3]: (block index within the gauge, local index, parity), -1 where untouched."""
    coords = np.asarray(coords, dtype=np.int64)
    out = np.full((len(coords), 3), -1, dtype=np.int64)
    at = np.flatnonzero(coords >= 0)
    pos = slot[bt.block_of_coord[coords[at]]]
    at, pos = at[pos >= 0], pos[pos >= 0]
    out[at, 0] = pos
    out[at, 1] = bt.local_of_coord[coords[at]]
    out[at, 2] = bt.parity[coords[at]]
    return out


def _additive_gauges(engine: Engine, uses: dict[str, dict[str, tuple]]) -> tuple[list[Gauge], list[Refusal]]:
    """Every additive probe that reached an absorber alive and moves no parameter used elsewhere is a gauge."""
    gauges: list[Gauge] = []
    refusals: list[Refusal] = []
    for p in engine.probes:
        if p.kind != "add":
            continue
        if p.dead:
            where, why = p.refusals[-1] if p.refusals else (p.node.name, "dead")
            refusals.append(Refusal(where, p.describe, why))
            continue
        if not p.sinks:
            refusals.append(Refusal(p.node.name, p.describe, "the translation never reaches an absorber"))
            continue
        bad = None
        for param in {lg.param for lg in p.legs}:
            missing = _uncovered_uses(uses.get(param, {}), [lg for lg in p.legs if lg.param == param]) \
                - p.also_uses.get(param, set())
            if missing:
                bad = (f"parameter {param} is also used where the translation is not compensated (tied or "
                       f"shared)", sorted(missing)[0])
        if bad:
            refusals.append(Refusal(bad[1], p.describe, bad[0]))
            continue
        dim = sum(lg.shift_dim(tuple(engine.gg.params[lg.param].shape)) for lg in p.legs if lg.role == "shift")
        family = additive_family(p.seed, p.tags, {what for _, what in p.sinks})
        gauges.append(Gauge("", family, "add", [], [dataclasses.replace(lg, axes=tuple(lg.axes)) for lg in p.legs],
                            proof=Proof(sorted({(lid, nd) for lid, nd, _ in p.citations})), additive_dim=dim,
                            description=[p.describe]))
    sizes = {name: int(np.prod(info.shape, dtype=np.int64)) for name, info in engine.gg.params.items()}
    return _drop_subsumed_shifts(gauges, sizes), refusals


def _drop_subsumed_shifts(gauges: list[Gauge], sizes: dict[str, int]) -> list[Gauge]:
    """A uniform shift of a parameter (b += s 1: its one shift leg broadcast over all of b's axes) is an instance of
    the surviving gauges that shift b along the same or fewer broadcast axes when together they cover every entry of
    b (b's whole translation b += t, its segments' translations, or a row shift W += 1 aᵀ, b += s 1 at a = 0). It
    follows the same paths to the same absorbers (a sink that absorbs only constants would have killed the wider
    ones), so it adds no dimension and is dropped; it stays where nothing wider survived (BERT's tied head, whose
    table may not move)."""
    def shifts(g):
        return [lg for lg in g.legs if lg.role == "shift"]

    def uniform(g):
        s = shifts(g)
        return len(s) == 1 and g.additive_dim == 1 and s[0].select is None and len(s[0].axes) > 0

    def covered(g):
        u = shifts(g)[0]
        entries: set = set()
        for h in gauges:
            if h is g or uniform(h):
                continue
            for lg in shifts(h):
                if lg.param == u.param and lg.part == u.part and set(lg.axes) <= set(u.axes):
                    if lg.select is None:
                        return True
                    entries.update(np.asarray(lg.select).tolist())
        return not u.part and len(entries) == sizes.get(u.param, -1)

    return [g for g in gauges if not (uniform(g) and covered(g))]
