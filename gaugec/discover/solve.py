"""Turn the rules' constraints into gauges.

1. Ties from contractions (q.k: A with A^-T) join coordinates in a union-find with parity (parity 1 = dual).
   A coordinate tied to its own dual would need A = A^-T (an orthogonal group); it is refused for now.
2. Blocks: the coordinates of a GL seed start as one block; every fibre F a rule imposed (a tensor slice the action
   must not leave) refines blocks into B ∩ F and B \\ F. Two coordinates share a final block iff they start
   together and lie in exactly the same fibres.
3. Kinds: a block is GL(m) unless a rule restricted it: "pos" (R+, ReLU), "scalar" (R*, elementwise products and
   gains) on single coordinates, "rot2" (a I + b J, the RoPE commutant) on a rotary pair.
4. Kills: a block with a killed coordinate is fixed at the identity; a parameter whose uses are not all covered by
   the gauge's legs (tied weights) kills the blocks that move it.
5. Components of probes joined by ties are the gauge instances; each gets a family from what its rules saw.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from gaugec.discover.engine import Engine, Leg


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))
        self.parity = [0] * n    # parity relative to parent
        self.conflict: set[int] = set()

    def find(self, x: int) -> tuple[int, int]:
        path = []
        p = 0
        while self.parent[x] != x:
            path.append(x)
            p ^= self.parity[x]
            x = self.parent[x]
        root = x
        # path compression with parity
        acc = p
        for node in path:
            nxt_par = self.parity[node]
            self.parent[node] = root
            self.parity[node] = acc
            acc ^= nxt_par
        return root, p

    def union(self, a: int, b: int, parity: int):
        ra, pa = self.find(a)
        rb, pb = self.find(b)
        if ra == rb:
            if pa ^ pb != parity:
                self.conflict.add(ra)
            return
        self.parent[rb] = ra
        self.parity[rb] = pa ^ pb ^ parity
        if rb in self.conflict:
            self.conflict.add(ra)


@dataclasses.dataclass
class Block:
    kind: str                 # "gl" | "rot2" | "scalar" | "pos"
    coords: list[int]         # root coordinate ids, in the block's local order

    @property
    def size(self) -> int:
        return len(self.coords)

    @property
    def dim(self) -> int:
        return {"gl": self.size * self.size, "rot2": 2, "scalar": 1, "pos": 1}[self.kind]


@dataclasses.dataclass
class FoundGauge:
    family: str
    kind: str                        # "mult" | "add"
    blocks: list[Block]
    legs: list[Leg]
    coord_block: dict[int, tuple[int, int, int]]   # coordinate id -> (block, local index, parity)
    citations: list[tuple[str, str]]
    probes: list[str]
    tags: set
    additive_dim: int = 0

    @property
    def dim(self) -> int:
        if self.kind == "add":
            return self.additive_dim
        return sum(b.dim for b in self.blocks)


@dataclasses.dataclass
class Refusal:
    where: str
    probe: str
    reason: str


def solve(engine: Engine) -> tuple[list[FoundGauge], list[Refusal]]:
    cons = engine.cons
    n = cons.n_coords
    uf = UnionFind(n)
    killed: set[int] = set(cons.killed)
    kill_reason = dict(cons.kill_reasons)

    def kill(c, why, where=""):
        c = int(c)
        if c >= 0 and c not in killed:
            killed.add(c)
            kill_reason[c] = (why, where)

    # 1. contraction ties
    for node_name, sides in cons.half_edges.items():
        merged = {}
        for side in ("a", "b"):
            arrs = [C for _, C in sides.get(side, [])]
            if not arrs:
                continue
            shape = np.broadcast_shapes(*[a.shape for a in arrs])
            m = np.full(shape, -1, dtype=np.int64)
            for a in arrs:
                a = np.broadcast_to(a, shape)
                m = np.where(a >= 0, a, m)
            merged[side] = m
        if len(merged) < 2:
            for m in merged.values():
                for c in np.unique(m):
                    kill(c, "the other factor of a contraction carries no matching group", node_name)
            continue
        a, b = np.broadcast_arrays(merged["a"], merged["b"])
        for ca, cb in np.unique(np.stack([a.reshape(-1), b.reshape(-1)], 1), axis=0):
            if ca >= 0 and cb >= 0:
                uf.union(int(ca), int(cb), 1)
            elif ca >= 0 or cb >= 0:
                kill(max(ca, cb), "one factor of a contraction is fixed", node_name)

    roots = np.array([uf.find(c)[0] for c in range(n)], dtype=np.int64) if n else np.zeros(0, np.int64)
    for r in uf.conflict:
        kill(r, "a coordinate contracted with itself (A = A^-T): orthogonal groups are not derived yet")

    killed_roots = {int(roots[c]) for c in killed}

    # 2. blocks: start sets (GL seeds), refined by fibres and kind constraints
    start = UnionFind(n)
    for blk in cons.seed_blocks:
        rs = np.unique(roots[blk])
        for r in rs[1:]:
            start.union(int(rs[0]), int(r), 0)
    signature: dict[int, list] = {}
    for fid, fib in enumerate(cons.fibres):
        for r in {int(roots[c]) for c in fib}:
            signature.setdefault(r, []).append(fid)
    kind_of: dict[int, set] = {}
    rot_pairs: dict[int, set] = {}
    nf = len(cons.fibres)
    for i, (kind, cs) in enumerate(cons.kinds):
        rs = tuple(int(roots[c]) for c in cs)
        if kind == "rot2":
            for r in rs:
                signature.setdefault(r, []).append(("rot", frozenset(rs)))
                rot_pairs.setdefault(r, set()).add(rs)
                kind_of.setdefault(r, set()).add("rot2")
        else:
            for r in rs:
                signature.setdefault(r, []).append(("single", r))
                kind_of.setdefault(r, set()).add(kind)
    del nf
    for c in range(n):
        if cons.coord_kind[c] == "scalar":
            r = int(roots[c])
            signature.setdefault(r, []).append(("single", r))
            kind_of.setdefault(r, set()).add("scalar")

    all_roots = sorted({int(r) for r in roots})
    groups: dict[tuple, list[int]] = {}
    for r in all_roots:
        key = (start.find(r)[0], tuple(sorted(map(str, signature.get(r, [])))))
        groups.setdefault(key, []).append(r)

    # 3. kinds
    block_of_root: dict[int, int] = {}
    blocks: list[Block] = []
    block_dead: list[str | None] = []
    for key, rs in groups.items():
        kinds = set().union(*[kind_of.get(r, set()) for r in rs])
        dead = None
        if "rot2" in kinds:
            pairs = set().union(*[rot_pairs.get(r, set()) for r in rs])
            if len(rs) != 2 or len({frozenset(p) for p in pairs}) != 1 or kinds != {"rot2"}:
                dead = ("a rotary pair that other ops split or restrict", "")
                kind = "rot2"
            else:
                kind = "rot2"
                first = sorted(pairs)[0]
                rs = [first[0], first[1]]
        elif len(rs) == 1:
            kind = "pos" if "pos" in kinds else "scalar"
        else:
            kind = "gl"
            if kinds:
                dead = ("a block wider than one coordinate with a diagonal restriction", "")
        for r in rs:
            if r in killed_roots and dead is None:
                dead = next((kill_reason[c] for c in killed if int(roots[c]) == r), ("killed", ""))
        bid = len(blocks)
        blocks.append(Block(kind, list(rs)))
        block_dead.append(dead)
        for r in rs:
            block_of_root[r] = bid

    # 4./5. components of probes
    probe_of_root: dict[int, set] = {}
    for c in range(n):
        probe_of_root.setdefault(int(roots[c]), set()).add(cons.coord_probe[c])
    comp = UnionFind(len(engine.probes))
    for ps in probe_of_root.values():
        ps = sorted(ps)
        for p in ps[1:]:
            comp.union(ps[0], p, 0)

    uses = engine.param_uses()
    comps: dict[int, list] = {}
    for p in engine.probes:
        if p.kind == "mult":
            comps.setdefault(comp.find(p.id)[0], []).append(p)

    gauges: list[FoundGauge] = []
    refusals: list[Refusal] = []
    for probes in comps.values():
        legs = [lg for p in probes for lg in p.legs]
        # tied / shared parameters: every use must be a leg of this gauge
        for param in {lg.param for lg in legs}:
            leg_nodes = {lg.node for lg in legs if lg.param == param}
            missing = uses.get(param, set()) - leg_nodes
            if missing:
                for lg in legs:
                    if lg.param == param and lg.coords is not None:
                        for c in lg.coords[lg.coords >= 0]:
                            bid = block_of_root[int(roots[c])]
                            if block_dead[bid] is None:
                                block_dead[bid] = (f"parameter {param} is also used where the group does not "
                                                   f"act (tied or shared)", sorted(missing)[0])
        comp_coords = [c for p in probes for c in range(p.coord_base, p.coord_base + p.coord_count)]
        bids = sorted({block_of_root[int(roots[c])] for c in comp_coords})
        live = [b for b in bids if block_dead[b] is None]
        for b in bids:
            if block_dead[b] is not None:
                refusals.append(Refusal(block_dead[b][1] or probes[0].node.name, probes[0].describe,
                                        block_dead[b][0]))
        if not live:
            continue
        # families are per block: a fused QKV probe holds Q/K blocks and V/O blocks
        seed_tags = set().union(*[p.tags for p in probes]) & {"norm_gain"}
        coords_of_root: dict[int, list[int]] = {}
        for c in comp_coords:
            coords_of_root.setdefault(int(roots[c]), []).append(c)
        by_family: dict[str, list[int]] = {}
        for b in live:
            btags = set(seed_tags)
            for r in blocks[b].coords:
                for c in coords_of_root.get(r, []):
                    btags |= cons.coord_tags.get(c, set())
            by_family.setdefault(mult_family(btags), []).append(b)
        for fam, fam_blocks in by_family.items():
            local_id = {b: i for i, b in enumerate(fam_blocks)}
            coord_block = {}
            for c in comp_coords:
                r, par = uf.find(c)
                b = block_of_root[r]
                if b in local_id:
                    coord_block[c] = (local_id[b], blocks[b].coords.index(r), par)
            mine = np.array(sorted(coord_block), dtype=np.int64)
            cites = sorted({(lid, nd) for p in probes for lid, nd, cs in p.citations
                            if cs is None or np.isin(cs, mine).any()})
            gauges.append(FoundGauge(fam, "mult", [blocks[b] for b in fam_blocks], legs, coord_block, cites,
                                     [p.describe for p in probes], set().union(*[p.tags for p in probes])))
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
            missing = uses.get(param, set()) - {lg.node for lg in p.legs if lg.param == param}
            if missing:
                bad = (f"parameter {param} is also used where the translation is not compensated (tied or "
                       f"shared)", sorted(missing)[0])
        if bad:
            refusals.append(Refusal(bad[1], p.describe, bad[0]))
            continue
        dim = sum(_shift_dim(engine, lg) for lg in p.legs if lg.role == "shift")
        gauges.append(FoundGauge(additive_family(p), "add", [], list(p.legs), {},
                                 sorted({(lid, nd) for lid, nd, _ in p.citations}),
                                 [p.describe], set(p.tags), additive_dim=dim))
    if os.environ.get("GAUGEC_DEBUG"):
        for p in engine.probes:
            print("probe", p.id, p.describe, p.tags, p.refusals[:3])
    return gauges, refusals


def _shift_dim(engine, lg: Leg) -> int:
    shape = engine.gg.params[lg.param].shape
    return int(np.prod([s for i, s in enumerate(shape) if i not in lg.axes], dtype=np.int64))


def mult_family(tags: set) -> str:
    if "attn_qk" in tags:
        return "attention_qk_rope" if "rope" in tags else "attention_qk"
    if "attn_vo" in tags:
        return "attention_vo"
    if "norm_gain" in tags:
        return "norm_gain"
    if "glu" in tags:
        return "glu_rescale"
    if "relu" in tags:
        return "positive_rescale"
    return "linear_linear"


def additive_family(p) -> str:
    sinks = {what for _, what in p.sinks}
    if "key_translation" in p.tags:
        return "key_bias"
    if "attn_value_translation" in p.tags:
        return "value_bias"
    if p.seed == "row_shift" and ("cross_entropy" in sinks or "softmax" in sinks):
        return "logit_shift"
    if "layer_norm" in sinks or "centring" in sinks:
        return "norm_input_shift"
    return "bias_translation"
