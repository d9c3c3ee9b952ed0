"""Layer replay: a probe seeded inside a repeated layer, whose run never leaves that layer, does in layer k exactly
what the same probe did in the template layer, with every name and coordinate moved along.

A deep model is a stack of structurally identical layers (``layers.0`` ... ``layers.31``). Discovery runs one probe
per seed; most seeds (an MLP's GL on its hidden units, a head's maps, a bias's row shift) stay inside their layer, so
a 32-layer model repeats the same propagation 32 times. Here the probes of the *template* layer (``layers.1``: layer
0 reads the embedding, not a layer, and differs in context) are run for real and their effects recorded: the
constraints they added, their legs, citations, tags, refusals, sinks. A probe seeded at the same position of
layer k, with the same seed state, is then *replayed*: its effects are the template's, node and parameter names
mapped from the template layer to layer k, and coordinate ids shifted from the template probe's range to its own.

When it is exact. Layer k replays the template only when the two are isomorphic *in context*: the same ops in
the same order, with the same shapes, dtypes, pattern matches, parameter views and reach to f; every input from
inside the layer at the same position, from the layer before at the same position of that layer, a parameter
or buffer of the same shape used nowhere else, or else the very same node (shared rotary tables, masks); every
user likewise (the last layer, whose users are the final norm, is run for real). A probe is replayed only when
its template touched no node outside the template layer, its coordinates stayed in its own range, and nothing
started it elsewhere. Rules are deterministic functions of the nodes they see, so the replayed effects are the
ones a real run would have produced; ``tests/test_layer_replay.py`` compares the two on the zoo and Hugging Face
models gauge by gauge. ``GAUGEC_LAYER_REPLAY=0`` turns it off.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import torch.fx

from gaugec.arrays import distinct, shift_ids
from gaugec.discover.fx import node_shape

_LAYER_PATH = re.compile(r"^(.*?)(?:^|\.)(\d+)(?:\.|$)")
_NAME_TOKEN = re.compile(r"[\w.]*\w")   # a name ends in a word character (not a full stop)


def replay_enabled(flag: bool | None = None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("GAUGEC_LAYER_REPLAY", "1") not in ("0", "false", "no", "off")


def _module_path(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def layer_sequences(graph: torch.fx.Graph) -> dict[str, list[list[torch.fx.Node]]]:
    """The computing nodes of each repeated layer, in graph order: ``{prefix: [nodes of prefix.0, prefix.1, ...]}``
    for every module list with at least three entries (a layer is named by its first integer path component)."""
    by_layer: dict[tuple[str, int], list[torch.fx.Node]] = {}
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        path = _module_path(n)
        m = _LAYER_PATH.match(path) if path else None
        if m is None:
            continue
        by_layer.setdefault((m.group(1), int(m.group(2))), []).append(n)
    out: dict[str, list[list[torch.fx.Node]]] = {}
    for (prefix, i), nodes in sorted(by_layer.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.setdefault(prefix, [])
        if i != len(out[prefix]):
            out[prefix] = []            # indices with a gap: not a plain stack
            continue
        out[prefix].append(nodes)
    return {p: seqs for p, seqs in out.items() if len(seqs) >= 3}


@dataclasses.dataclass
class LayerMap:
    """Layer k as an image of the template layer: nodes, and names of nodes and parameters."""

    nodes: dict[torch.fx.Node, torch.fx.Node]
    names: dict[str, str]

    def name(self, s: str) -> str:
        return self.names.get(s, s)

    def text(self, s: str) -> str:
        """A message with every node or parameter name of the template layer replaced (whole tokens only)."""
        return _NAME_TOKEN.sub(lambda m: self.names.get(m.group(0), m.group(0)), s)


class _Mismatch(Exception):
    pass


def _signature(engine, n: torch.fx.Node):
    val = n.meta.get("val")
    dtype = getattr(val, "dtype", None)
    pv = engine.param_views.get(n)
    match = engine.matches.get(n)
    return (n.op, str(n.target), node_shape(n), dtype, n in engine.reaches_f,
            None if pv is None else (pv.pshape, pv.offset, tuple(i.shape for i in pv.idx)),
            None if match is None else match.name)


class _Matcher:
    """Builds the map template layer -> layer k, checking the isomorphism in context (module docstring)."""

    def __init__(self, engine, seqs: list[list[torch.fx.Node]], t: int, k: int, uses: dict):
        self.engine = engine
        self.seqs, self.t, self.k = seqs, t, k
        self.pos = [{n: j for j, n in enumerate(s)} for s in seqs]
        self.nodes: dict[torch.fx.Node, torch.fx.Node] = {}
        self.names: dict[str, str] = {}
        self.uses = uses
        sig = engine.gg.exported.graph_signature if engine.gg.exported is not None else None
        self.buffers = set(sig.inputs_to_buffers) if sig is not None else set()

    def _layer_of(self, n) -> tuple[int, int] | None:
        for i in (self.t - 1, self.t, self.t + 1, self.k - 1, self.k, self.k + 1):
            if 0 <= i < len(self.seqs) and n in self.pos[i]:
                return i, self.pos[i][n]
        return None

    def _pair(self, a, b):
        """Input or user ``a`` of a template node against ``b`` of the replica node."""
        if not isinstance(a, torch.fx.Node) or not isinstance(b, torch.fx.Node):
            if a != b or type(a) is not type(b):
                raise _Mismatch("constant arguments differ")
            return
        la, lb = self._layer_of(a), self._layer_of(b)
        if la is not None and la[0] - self.t in (-1, 0, 1):
            if lb is None or lb != (la[0] - self.t + self.k, la[1]):
                raise _Mismatch(f"{a.name} and {b.name} sit at different places")
            if la[0] != self.t and (_signature(self.engine, a) != _signature(self.engine, b)
                                    or len(a.users) != len(b.users)):
                raise _Mismatch(f"the neighbours {a.name} and {b.name} differ")   # rules may look one step out
            return
        if a is b:
            return
        if a.op == "placeholder" and b.op == "placeholder":
            pa, pb = self.engine.gg.param_of(a), self.engine.gg.param_of(b)
            if pa is not None and pb is not None:
                if self.engine.gg.params[pa].shape != self.engine.gg.params[pb].shape \
                        or not self._used_only_in(pa, self.t) or not self._used_only_in(pb, self.k):
                    raise _Mismatch(f"parameters {pa} and {pb} differ in shape or are shared")
                self._name(pa, pb)
                self._name(a.name, b.name)
                return
            if a.name in self.buffers and b.name in self.buffers and node_shape(a) == node_shape(b):
                self._name(a.name, b.name)      # a per-layer buffer (rotary frequencies): rules never read values
                return
        raise _Mismatch(f"{a.name} and {b.name} are different nodes outside the layers")

    def _used_only_in(self, param: str, layer: int) -> bool:
        names = {n.name for n in self.seqs[layer]}
        return all(u in names for u in self.uses.get(param, {}))

    def _name(self, a: str, b: str):
        if self.names.setdefault(a, b) != b:
            raise _Mismatch(f"{a} maps to two names")

    def build(self) -> LayerMap | None:
        src, dst = self.seqs[self.t], self.seqs[self.k]
        if len(src) != len(dst):
            return None
        try:
            for a, b in zip(src, dst):
                if _signature(self.engine, a) != _signature(self.engine, b):
                    raise _Mismatch(f"{a.name} and {b.name} differ")
                self.nodes[a] = b
                self._name(a.name, b.name)
            for a, b in zip(src, dst):
                self._pair_args(a.args, b.args)
                self._pair_args(tuple(a.kwargs.values()), tuple(b.kwargs.values()))
                if list(a.kwargs) != list(b.kwargs) or len(a.users) != len(b.users):
                    raise _Mismatch(f"{a.name} and {b.name} differ in keywords or users")
                for ua, ub in zip(a.users, b.users):
                    self._pair(ua, ub)
                ma, mb = self.engine.matches.get(a), self.engine.matches.get(b)
                if ma is not None:
                    if mb is None or len(ma.internal) != len(mb.internal):
                        raise _Mismatch("pattern matches differ")
                    self._pair(ma.output, mb.output)
        except _Mismatch:
            return None
        return LayerMap(self.nodes, self.names)

    def _pair_args(self, a, b):
        if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
            if not isinstance(a, (tuple, list)) or not isinstance(b, (tuple, list)) or len(a) != len(b):
                raise _Mismatch("argument lists differ")
            for x, y in zip(a, b):
                self._pair_args(x, y)
            return
        self._pair(a, b)


@dataclasses.dataclass
class _Record:
    """What one template probe's run did (lengths are the stores' lengths before it ran)."""

    probe: object
    legs: list
    citations: list
    refusals: list
    sinks: list
    tags: set
    also_uses: dict
    dead: bool
    fibres: list
    kinds: list
    kills: list
    cons_tags: list          # (tag, coords)
    half_edges: list         # (node name, side, C)
    unknown_ops: dict
    fresh: int


class LayerReplay:
    """Records the template layer's probes and replays them in the layers isomorphic to it (module docstring)."""

    TEMPLATE = 1

    def __init__(self, engine):
        self.engine = engine
        self.where: dict[torch.fx.Node, tuple[LayerMap | None, torch.fx.Node]] = {}   # seed node -> (map, template)
        self.template_nodes: dict[torch.fx.Node, frozenset] = {}
        self.records: dict[tuple, _Record | None] = {}
        self.replayed = 0
        uses = engine.param_uses()
        for seqs in layer_sequences(engine.graph).values():
            t = self.TEMPLATE
            inside = frozenset(seqs[t])
            for n in seqs[t]:
                self.template_nodes[n] = inside
            for k in range(t + 1, len(seqs)):
                lm = _Matcher(engine, seqs, t, k, uses).build()
                if lm is None:
                    continue
                for a, b in lm.nodes.items():
                    self.where[b] = (lm, a)

    @staticmethod
    def _slot(probe, node) -> tuple:
        """Which probe of a seed node this is: seeds run in a fixed order, so (template node, kind, seed, mode, number
        of coordinates, seed shape) and the count of like probes before it name it in every layer."""
        return (node, probe.kind, probe.seed, probe.mode, probe.coord_count, probe.initial.shape)

    def _key(self, probe) -> tuple | None:
        if probe.node in self.template_nodes:
            node = probe.node
        elif probe.node in self.where:
            node = self.where[probe.node][1]
        else:
            return None
        same = [p for p in self._seeded.get(probe.node, []) if self._slot(p, node) == self._slot(probe, node)]
        return self._slot(probe, node) + (same.index(probe),)

    def index_seeds(self):
        self._seeded: dict[torch.fx.Node, list] = {}
        for p in self.engine.probes:
            self._seeded.setdefault(p.node, []).append(p)

    # -- recording -------------------------------------------------------------------------------------------------
    def start(self, probe):
        """Before a real run: the stores' lengths, if ``probe`` is a template probe (else None)."""
        if probe.node not in self.template_nodes or probe.also:
            return None
        cons, e = self.engine.cons, self.engine
        return dict(legs=len(probe.legs), citations=len(probe.citations), refusals=len(probe.refusals),
                    sinks=len(probe.sinks), tags=set(probe.tags), also_uses={k: set(v) for k, v in
                                                                            probe.also_uses.items()},
                    fibres=len(cons.fibres), kinds=len(cons.kinds), kills=len(cons.kills),
                    cons_tags={t: len(v) for t, v in cons.tags.items()},
                    half_edges={(nd, s): len(v) for nd, sides in cons.half_edges.items() for s, v in sides.items()},
                    unknown_ops=dict(e.unknown_ops), fresh=e._fresh, touched=set())

    def finish(self, probe, before):
        """After the real run of a template probe: keep its effects if the run stayed inside the layer."""
        if before is None:
            return
        key = self._key(probe)
        inside = self.template_nodes[probe.node]
        local = before["touched"] <= inside
        cons, e = self.engine.cons, self.engine
        lo, hi = probe.coord_base, probe.coord_base + probe.coord_count
        half = []
        for nd, sides in cons.half_edges.items():
            for s, v in sides.items():
                for pid, C in v[before["half_edges"].get((nd, s), 0):]:
                    half.append((nd, s, C))
                    local &= pid == probe.id
        cons_tags = [(t, c) for t, v in cons.tags.items() for c in v[before["cons_tags"].get(t, 0):]]
        fibres, kinds, kills = (cons.fibres[before["fibres"]:], cons.kinds[before["kinds"]:],
                                cons.kills[before["kills"]:])
        coords = [f for f in fibres] + [a for _, a in kinds] + [c for c, _, _ in kills] + [c for _, c in cons_tags] \
            + [C for _, _, C in half] + [lg.coords for lg in probe.legs[before["legs"]:] if lg.coords is not None] \
            + [c for _, _, cs in probe.citations[before["citations"]:] if cs for c in cs if c is not None]
        for c in coords:
            c = np.asarray(c)
            used = c[c >= 0]
            if used.size and (used.min() < lo or used.max() >= hi):
                local = False
                break
        if not local or key is None:
            self.records[key] = None
            return
        # a citation's coordinate arrays are only ever asked which coordinates they hold: keep those, once
        citations = [(lid, nd, cs if not cs else [distinct(np.concatenate([np.asarray(c).reshape(-1) for c in cs]))])
                     for lid, nd, cs in probe.citations[before["citations"]:]]
        self.records[key] = _Record(
            probe, probe.legs[before["legs"]:], citations,
            probe.refusals[before["refusals"]:], probe.sinks[before["sinks"]:], probe.tags - before["tags"],
            {k: v - before["also_uses"].get(k, set()) for k, v in probe.also_uses.items()}, probe.dead,
            fibres, kinds, kills, cons_tags, half,
            {k: v - before["unknown_ops"].get(k, 0) for k, v in e.unknown_ops.items()
             if v != before["unknown_ops"].get(k, 0)}, e._fresh - before["fresh"])

    # -- replay ----------------------------------------------------------------------------------------------------
    def replay(self, probe) -> bool:
        """Apply the template's effects to ``probe`` (seeded in an isomorphic layer); False when it must run."""
        if probe.node not in self.where or probe.also:
            return False
        lm, _ = self.where[probe.node]
        rec = self.records.get(self._key(probe))
        if rec is None or not self._same_seed(rec.probe, probe, lm):
            return False
        e, cons = self.engine, self.engine.cons
        shift = probe.coord_base - rec.probe.coord_base

        def move(c):
            if c is None:
                return None
            return shift_ids(c, shift) if shift else c

        for lg in rec.legs:
            probe.legs.append(_moved_leg(lg, lm, move))
        probe.citations.extend((lid, lm.name(nd), None if cs is None else [move(c) for c in cs])
                               for lid, nd, cs in rec.citations)
        probe.refusals.extend((lm.name(nd), lm.text(why)) for nd, why in rec.refusals)
        probe.sinks.extend((lm.name(nd), what) for nd, what in rec.sinks)
        probe.tags.update(rec.tags)
        for param, nodes in rec.also_uses.items():
            probe.also_uses.setdefault(lm.name(param), set()).update(lm.name(n) for n in nodes)
        probe.dead = probe.dead or rec.dead
        for f in rec.fibres:
            cons.add_fibre_rows(move(f)[None, :])
        cons.kinds.extend((kind, move(a)) for kind, a in rec.kinds)
        cons.kills.extend((move(c), lm.text(why), lm.name(where)) for c, why, where in rec.kills)
        for t, c in rec.cons_tags:
            cons.tags.setdefault(t, []).append(move(c))
        for nd, side, C in rec.half_edges:
            cons.half_edges.setdefault(lm.name(nd), {}).setdefault(side, []).append((probe.id, move(C)))
        for op, count in rec.unknown_ops.items():
            e.unknown_ops[op] = e.unknown_ops.get(op, 0) + count
        e._fresh += rec.fresh
        self.replayed += 1
        return True

    @staticmethod
    def _same_seed(template, probe, lm: LayerMap) -> bool:
        """The replica starts where the template started: the same seed state (shifted), legs and citations."""
        if probe.coord_count != template.coord_count or probe.initial.shape != template.initial.shape:
            return False
        shift = probe.coord_base - template.coord_base
        a = np.where(template.initial >= 0, template.initial + shift, -1) if probe.kind == "mult" else template.initial
        return bool(np.array_equal(a, probe.initial)) and probe.describe == lm.text(template.describe)


def _moved_leg(lg, lm: LayerMap, move):
    return dataclasses.replace(lg, param=lm.name(lg.param), node=lm.name(lg.node), site=lm.name(lg.site),
                               conj=lm.name(lg.conj), coords=move(lg.coords))
