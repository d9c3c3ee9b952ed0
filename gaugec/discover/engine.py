"""The propagation engine: seeds every probe, runs it through the graph in topological order, dispatching each
node to its rule (:mod:`gaugec.discover.registry`), and gives the rules their context (:class:`RuleCtx`).
Index-moving ops apply the same numpy operation to the probe's array, so views, transposes, slices, concatenation,
GQA expansion and head splitting need no special cases. What a probe carries: :mod:`gaugec.discover.state`."""
from __future__ import annotations

import dataclasses
import heapq

import numpy as np
import torch
import torch.fx

from gaugec.arrays import shift_ids
from gaugec.capture import GaugeGraph
from gaugec.discover import rules  # noqa: F401  (registers the rules and patterns)
from gaugec.discover.layers import LayerReplay, replay_enabled
from gaugec.discover.fx import arg, data_dependent, node_shape, op_name, varying_axes
from gaugec.discover.registry import (ADD_RULES, BARRIERS, CONJUGATED, INDEX_RULES, MULT_RULES, PATTERNS,
                                      SEED_RULES, STREAM_READERS, PatternMatch, RuleError, strict_default)
from gaugec.discover.rules.index import apply_index_op, cat_moves_parameters
from gaugec.discover.state import Constraints, ParamView, Probe, row_classes, rows_along
from gaugec.plan.gauge import Leg


class Engine:
    def __init__(self, gg: GaugeGraph, loss: str | None, f_leaves: list[int] | None = None,
                 strict: bool | None = None):
        self.gg = gg
        self.loss = loss
        self.graph = gg.graph
        self.topo = list(self.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.topo)}
        self.cons = Constraints()
        self.probes: list[Probe] = []
        self.param_views: dict[torch.fx.Node, ParamView] = {}
        self.strict = strict_default() if strict is None else strict
        self.rule_failures: list[tuple[str, str, str]] = []     # (where, which rule, why): see _guarded
        self.matches: dict[torch.fx.Node, PatternMatch] = {}   # every node of a recognised multi-node op
        self.unknown_ops: dict[str, int] = {}
        self.output_node = next(n for n in reversed(self.topo) if n.op == "output")
        # what f is: these output nodes must be left unchanged; the loss's shift invariance applies to a single one
        users = gg.user_output_nodes()
        self.f_outputs = {users[i] for i in (gg.f_leaves() if f_leaves is None else f_leaves)}
        self.reaches_f = self._ancestors(self.f_outputs)   # a branch that never reaches f constrains nothing
        self._fresh = 0
        self._build_param_views()
        self._find_patterns()

    def _ancestors(self, nodes) -> set:
        """Every node ``nodes`` depend on, including through in-place writes: a node that mutates a tensor (or a
        view of it) in place, ``copy_(key_states[..., d:], k_pe)``, feeds every reader of that tensor although no
        graph edge says so."""
        writers: dict = {}
        for n in self.topo:
            if n.op == "call_function" and _mutates_first_arg(n) and n.args and isinstance(n.args[0], torch.fx.Node):
                writers.setdefault(_view_base(n.args[0]), []).append(n)
        seen, stack = set(nodes), [n for n in nodes if isinstance(n, torch.fx.Node)]
        while stack:
            n = stack.pop()
            for a in [*n.all_input_nodes, *writers.get(n, ())]:
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
        return seen

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def fresh_labels(self, n: int) -> int:
        base = self._fresh
        self._fresh += n
        return base

    def ops_without_rules(self) -> dict[str, int]:
        """Ops in the graph that no rule table knows (barriers for every probe that would reach them)."""
        known = set(MULT_RULES) | set(ADD_RULES) | set(INDEX_RULES) | set(BARRIERS) | set(SEED_RULES)
        out: dict[str, int] = {}
        for n in self.topo:
            if n.op == "call_function":
                name = op_name(n)
                if name not in known:
                    out[name] = out.get(name, 0) + 1
        return out

    def param_uses(self) -> dict[str, dict[str, tuple]]:
        """parameter -> {name of a node that uses it (through parameter views): the slice it reads, as
        ``ParamView.fixed`` pairs (empty: the whole parameter)}."""
        uses: dict[str, dict[str, tuple]] = {}
        for n in self.topo:
            if n in self.param_views or n.op == "output":
                continue
            for a in n.all_input_nodes:
                pv = self.param_views.get(a)
                if pv is not None:
                    uses.setdefault(pv.param, {})[n.name] = pv.fixed(-1)
        return uses

    def _build_param_views(self):
        for n in self.topo:
            if n.op == "placeholder":
                pname = self.gg.param_of(n)
                shape = node_shape(n)
                if pname is not None and shape is not None:
                    self.param_views[n] = ParamView.of(pname, shape)
                continue
            if n.op != "call_function":
                continue
            name = op_name(n)
            ins = [a for a in n.all_input_nodes if node_shape(a) is not None]
            pv_ins = [a for a in ins if a in self.param_views]
            if not pv_ins or len(ins) != len(pv_ins) or len(pv_ins) != 1:
                continue
            src = self.param_views[pv_ins[0]]
            if name in INDEX_RULES:
                try:
                    outs = [apply_index_op(self, n, {pv_ins[0]: np.broadcast_to(i, src.shape)}, fill=-1)
                            for i in src.idx]
                except Exception:  # noqa: BLE001 - not a view we can follow: the tensor is treated as computed
                    continue
                if all(isinstance(o, np.ndarray) for o in outs):
                    self.param_views[n] = ParamView(src.param, tuple(outs), src.pshape, src.offset)
            elif name == "add" and src.offset == 0.0 and isinstance(arg(n, 1, "other"), (int, float)) \
                    and arg(n, 0, "self") is pv_ins[0] and arg(n, 2, "alpha", 1) == 1:
                shape = node_shape(n)
                self.param_views[n] = ParamView(src.param, tuple(np.broadcast_to(i, shape) for i in src.idx),
                                                src.pshape, float(arg(n, 1, "other")))

    def _guarded(self, what: str, where: str, fn, *args):
        """Run a pattern finder or a seed rule: one that raises costs its gauges, never the compile (recorded in
        ``rule_failures`` and reported as a refusal); in strict mode it re-raises."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a rule crash is a barrier, never a compile failure
            if self.strict:
                raise RuleError(f"{what} raised at {where} (strict mode): {type(exc).__name__}: {exc}") from exc
            self.rule_failures.append((where, what, f"{what} could not handle this node ({type(exc).__name__}: "
                                                    f"{str(exc)[:120]}): its gauges are not found"))
            return None

    def _find_patterns(self):
        for name, find in PATTERNS.items():
            for match in self._guarded(f"the {name} pattern", "the graph", find, self) or ():
                for node in match.internal:
                    self.matches[node] = match

    # -- seeding and running -----------------------------------------------------------------------------------
    def seed_all(self):
        for n in self.topo:
            if n.op != "call_function":
                continue
            if not data_dependent(n):
                for fn in SEED_RULES.get(op_name(n), ()):
                    self._guarded(f"the seed rule {fn.__name__}", n.name, fn, SeedCtx(self, n), n)
        self._add_rotation_twins()

    def _add_rotation_twins(self):
        """A GL probe whose tensor reaches a normalisation that passes rotations (through sums, casts and views)
        gets a twin in mode "orth": the same seed and legs on fresh coordinates, which passes those norms as a
        rotation instead of stopping at them as a scale (one probe cannot carry both: the scale stops at the norm,
        the rotation moves its output)."""
        targets = {n for find in STREAM_READERS for n in find(self)}
        if not targets:
            return
        passable = set(INDEX_RULES) | {"add", "add_", "sub", "sub_"}
        reaches: set = set()
        for n in reversed(self.topo):
            if n in targets or any(u in reaches for u in n.users
                                   if u.op == "call_function" and op_name(u) in passable):
                reaches.add(n)
        for p in list(self.probes):
            if p.kind == "mult" and p.seed == "gl" and not p.mode and p.node in reaches:
                self._twin(p)

    def _twin(self, p: Probe):
        initial = shift_ids(p.initial, -p.coord_base)
        twin = self.add_probe("mult", p.seed, p.node, initial, "gl", describe=f"rotation twin of: {p.describe}")
        twin.mode = "orth"
        shift = twin.coord_base - p.coord_base
        move = (lambda c: None if c is None else np.where(c >= 0, c + shift, -1))
        twin.legs = [dataclasses.replace(lg, coords=move(lg.coords)) for lg in p.legs]
        twin.citations = [(lid, nd, None if cs is None else [move(c) for c in cs]) for lid, nd, cs in p.citations]
        twin.tags = set(p.tags)

    def add_probe(self, kind, seed, node, initial, coord_kind=None, describe="") -> Probe:
        p = Probe(len(self.probes), kind, seed, node, initial, describe=describe)
        if kind == "mult":
            n = int(initial.max()) + 1 if initial.size else 0
            p.coord_base = self.cons.new_coords(n, p.id, coord_kind or "gl")
            p.coord_count = n
            p.initial = shift_ids(initial, p.coord_base)
        self.probes.append(p)
        return p

    def run(self, replay: bool | None = None):
        """Every probe through the graph; with layer replay (:mod:`gaugec.discover.layers`, default on) a probe of a
        repeated layer whose template probe stayed inside its layer takes the template's effects instead."""
        layers = LayerReplay(self) if replay_enabled(replay) else None
        if layers is not None:
            layers.index_seeds()
        for probe in self.probes:
            if layers is not None and layers.replay(probe):
                continue
            before = layers.start(probe) if layers is not None else None
            self._run_probe(probe, None if before is None else before["touched"])
            if before is not None:
                layers.finish(probe, before)
        self.replayed = 0 if layers is None else layers.replayed

    def _run_probe(self, probe: Probe, touched: set | None = None):
        """``touched`` collects every node the run dispatched at or looked at as a user (layer replay's check that
        the run stayed inside its layer)."""
        starts = {n: a for n, a in {probe.node: probe.initial, **probe.also}.items() if (a >= 0).any()}
        if not starts:
            return              # closed at its seed (what it moves is absorbed there): nothing to carry
        state: dict[torch.fx.Node, object] = dict(starts)
        heap: list[int] = []
        pending: set[torch.fx.Node] = set()

        def push_users(n):
            if touched is not None:
                touched.update(n.users)
            for u in n.users:
                if u not in pending and (u.op == "output" or u in self.reaches_f):
                    pending.add(u)
                    heapq.heappush(heap, self.index[u])

        for n in starts:
            push_users(n)
        while heap and not probe.dead:
            node = self.topo[heapq.heappop(heap)]
            pending.discard(node)
            if touched is not None:
                touched.add(node)
                touched.update(self.matches[node].internal if node in self.matches else ())
            if node.op == "output":
                self._at_output(probe, node, state)
                continue
            match = self.matches.get(node)
            if match is not None and node is not match.output:
                # inside a recognised multi-node op: the whole op is evaluated at its output node
                if match.output not in pending:
                    pending.add(match.output)
                    heapq.heappush(heap, self.index[match.output])
                continue
            ctx = RuleCtx(self, probe, node, state)
            if node in starts:      # a start of its own (a tied head) that the translation reaches as well
                ctx.kill_all("a tied parameter's second use is reached by the translation it starts (not derived)")
                continue
            out = ctx.dispatch(match)
            if isinstance(out, np.ndarray) and not (out >= 0).any():
                out = None      # nothing acted on here (e.g. the untouched part of a split): no state
            if out is not None and not probe.dead:
                state[node] = out
                push_users(node)

    def _at_output(self, probe: Probe, node, state):
        from torch.utils import _pytree as pytree

        for leaf in pytree.tree_leaves(node.args[0]):
            if not isinstance(leaf, torch.fx.Node) or leaf not in state:
                continue
            if leaf not in self.f_outputs:
                continue  # not part of f: the gauge need not preserve it
            arr = state[leaf]
            ctx = RuleCtx(self, probe, node, state)
            if probe.kind == "mult":
                ctx.kill(arr, "the group reaches the model output unabsorbed")
            elif self.loss == "cross_entropy" and len(self.f_outputs) > 1:
                ctx.kill(arr, "the translation reaches one of several outputs f is made of (the loss's shift "
                              "invariance is assumed only when f is one output: pass compile(..., output=...))")
            elif self.loss == "cross_entropy" and arr.ndim >= 1 and (arr.ndim - 1) not in varying_axes(arr):
                ctx.cite("softmax_shift")
                ctx.sink("cross_entropy")
            else:
                why = ("the translation reaches the output and the loss is not shift-invariant"
                       if self.loss != "cross_entropy" else "the translation is not constant along the classes")
                ctx.kill(arr, why)


def _mutates_first_arg(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return bool(alias is not None and alias.is_write)


def _view_base(node: torch.fx.Node) -> torch.fx.Node:
    """The tensor a chain of views (index ops) starts from."""
    while node.op == "call_function" and op_name(node) in INDEX_RULES and node.args \
            and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


# ---------------------------------------------------------------------------------------------------------------
# rule context


class RuleCtx:
    """What a rule sees: the node, the probe's state on its inputs, and the constraint store."""

    def __init__(self, engine: Engine, probe: Probe, node: torch.fx.Node, state: dict):
        self.engine = engine
        self.probe = probe
        self.node = node
        self._state = state
        self.cons = engine.cons
        self.match: PatternMatch | None = None      # the recognised multi-node op being evaluated, if any

    @property
    def mult(self) -> bool:
        return self.probe.kind == "mult"

    def state(self, a):
        if isinstance(a, torch.fx.Node):
            return self._state.get(a)
        return None

    def shape(self, a=None):
        return node_shape(self.node if a is None else a)

    def param_view(self, a) -> ParamView | None:
        return self.engine.param_views.get(a) if isinstance(a, torch.fx.Node) else None

    def carried(self) -> list[torch.fx.Node]:
        """The inputs that carry the probe's state (for a recognised multi-node op: its inputs from outside)."""
        if self.match is not None:
            internal = self.match.internal
            return list(dict.fromkeys(a for i in internal for a in i.all_input_nodes
                                      if a not in internal and a in self._state))
        return [a for a in self.node.all_input_nodes if a in self._state]

    def dispatch(self, match: PatternMatch | None = None):
        """Apply the node's rule (or the recognised multi-node op ending here); no rule means a barrier, and a rule
        that raises is a barrier too (in strict mode it re-raises)."""
        name = match.name if match is not None else op_name(self.node)
        fn = None
        if data_dependent(self.node):
            return self.kill_all(f"'{name}' makes a tensor of data-dependent shape (after nonzero(), masked "
                                 "indexing, ...): a barrier")
        self.match = match
        conj_in = [a for a in self.carried() if a in self.probe.conj]
        if conj_in and (match is not None or (name not in INDEX_RULES and name not in CONJUGATED)):
            return self.kill_all(f"a rotation seen through a norm gain (D R D^-1) reaches '{name}': only linear "
                                 f"readers absorb it")
        try:
            if match is not None:
                return match.apply(self, self.node)
            if name in INDEX_RULES:
                self.cite("index_transport")
                out = apply_index_op(self.engine, self.node, self._state, fill=-1)
                if self.mult and name in ("cat", "concat", "concatenate"):
                    out = cat_moves_parameters(self, self.node, out)
                if conj_in and not self._carry_conj(conj_in):
                    return None
                return out
            table = MULT_RULES if self.mult else ADD_RULES
            fn = table.get(name)
            if fn is not None:
                return fn(self, self.node)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot handle this node is a barrier, never a crash
            if self.engine.strict:
                raise RuleError(f"the rule for '{name}' raised at node {self.node.name} (strict mode): "
                                f"{type(exc).__name__}: {exc}") from exc
            return self.kill_all(f"the rule for '{name}' could not handle this node ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})")
        if fn is None:
            reason = BARRIERS.get(name)
            if reason is None:
                reason = f"no rule for op '{name}' (a barrier: nothing crosses it)"
                self.engine.unknown_ops[name] = self.engine.unknown_ops.get(name, 0) + 1
            return self.kill_all(reason)

    # -- gain conjugation ----------------------------------------------------------------------------------------
    def conj_of(self, a):
        """(gain param, offset, gain flat index per position) when ``a`` carries D R D⁻¹, else None."""
        return self.probe.conj.get(a) if isinstance(a, torch.fx.Node) else None

    def set_conj(self, param: str, offset: float, index: np.ndarray):
        self.probe.conj[self.node] = (param, offset, index)

    def _carry_conj(self, conj_in) -> bool:
        """An index op moves the gain index with the state; every acted input must be conjugated by one gain
        (False, and the state killed, otherwise)."""
        params = {self.probe.conj[a][:2] for a in conj_in}
        if len(params) > 1 or len(conj_in) != len(self.carried()):
            self.kill_all("inputs conjugated by different gains (or not at all) meet in one index op")
            return False
        param, offset = next(iter(params))
        index = apply_index_op(self.engine, self.node, {a: self.probe.conj[a][2] for a in conj_in}, fill=-1)
        self.set_conj(param, offset, index)
        return True

    # -- recording ---------------------------------------------------------------------------------------------
    def cite(self, lemma_id: str, C: np.ndarray | None = None):
        """Record a lemma applied here, against the coordinates (multiplicative) that reach this node (or C).

        The coordinate arrays are kept by reference (states are never modified in place) and only searched when a
        probe's blocks split into several gauges."""
        coords = None
        if self.mult:
            coords = [C] if C is not None else [self._state[a] for a in self.carried()
                                                 if isinstance(self._state[a], np.ndarray)]
        self.probe.citations.append((lemma_id, self.node.name, coords))

    def tag(self, t: str, C: np.ndarray | None = None):
        """Record what the action met; with C (multiplicative) on those coordinates only."""
        self.probe.tags.add(t)
        if C is not None and self.mult:
            self.cons.tag(C, t)

    def sink(self, what: str):
        self.probe.sinks.append((self.node.name, what))

    def kill(self, arr, reason: str):
        self.probe.refusals.append((self.node.name, reason))
        if self.mult:
            self.cons.kill(arr, reason, self.node.name)
        else:
            self.probe.dead = True

    def kill_all(self, reason: str):
        carried = self.carried()
        for a in carried:
            self.kill(self._state[a], reason)
        if not carried and not self.mult:
            self.probe.refusals.append((self.node.name, reason))
            self.probe.dead = True
        return None

    def leg(self, param: str, role: str, at: torch.fx.Node | None = None, **kw):
        """A leg on ``param``, used at node ``at`` (default: this node; the tied-use check compares them)."""
        self.probe.legs.append(Leg(param, role, node=(at or self.node).name, **kw))

    def fibres(self, C, axes):
        self.cons.add_fibres(C, axes)

    def restrict(self, C: np.ndarray, kind: str):
        """Every coordinate of C gets a one-dimensional block of ``kind`` ("pos" or "scalar")."""
        self.cons.restrict(C, kind)

    def tie(self, C: np.ndarray, axes: list[int], kind: str):
        """The coordinates of C along ``axes`` (per position of the other axes: one normalised vector each) form one
        block of ``kind`` ("scale", "orth", "orth1": :meth:`Constraints.tie`); a row only partly acted on is killed
        (a part of a normalised vector cannot be moved alone)."""
        rows = rows_along(C, axes)
        self.cons.add_fibre_rows(rows)
        partial = (rows < 0).any(1) & (rows >= 0).any(1)
        if partial.any():
            self.kill(rows[partial], "a normalisation over a vector the group only partly moves")
        self.cons.tie(rows[(rows >= 0).all(1)], kind)

    def half_edge(self, side: str, C: np.ndarray):
        self.cons.half_edges.setdefault(self.node.name, {}).setdefault(side, []).append((self.probe.id, C))

    def fresh(self, *arrays: np.ndarray) -> np.ndarray:
        """New labels, one per distinct tuple of input labels; positions where all inputs are -1 stay -1."""
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        cols = np.stack([np.broadcast_to(a, shape).reshape(-1) for a in arrays], axis=1)
        zero = np.all(cols < 0, axis=1)
        inv = row_classes(cols)
        out = self.engine.fresh_labels(int(inv.max()) + 1 if inv.size else 0) + inv
        out[zero] = -1
        return out.reshape(shape)


class SeedCtx:
    def __init__(self, engine: Engine, node):
        self.engine = engine
        self.node = node

    def param_view(self, a):
        return self.engine.param_views.get(a) if isinstance(a, torch.fx.Node) else None

    def tie(self, C: np.ndarray, axes: list[int], kind: str):
        """The last probe's coordinates C along ``axes`` form one block of ``kind`` each (:meth:`RuleCtx.tie`)."""
        p = self.engine.probes[-1]
        C = np.where(C >= 0, C + p.coord_base, -1)
        rows = rows_along(C, axes)
        self.engine.cons.add_fibre_rows(rows)
        self.engine.cons.tie(rows, kind)

    def probe(self, kind, seed, initial, legs=(), coord_kind=None, describe="", tags=(), cites=()) -> Probe:
        """A new probe seeded here; ``cites`` are the lemmas that make the seed's legs a group action."""
        p = self.engine.add_probe(kind, seed, self.node, np.asarray(initial), coord_kind, describe)
        seed_coords = [np.arange(p.coord_base, p.coord_base + p.coord_count)] if kind == "mult" else None
        for lid in cites:
            p.citations.append((lid, self.node.name, seed_coords))
        for lg in legs:
            if lg.coords is not None:
                lg.coords = np.where(lg.coords >= 0, lg.coords + p.coord_base, -1)
            lg.node = self.node.name
            p.legs.append(lg)
        p.tags.update(tags)
        return p
