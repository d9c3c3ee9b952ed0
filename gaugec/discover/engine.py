"""The propagation engine: seeds, probes, the rule context and the rule registry.

A *probe* follows one candidate group action forward from its seed through the graph. Its state on a tensor is an
integer array of the tensor's full shape:

* multiplicative probes (``kind="mult"``) carry *coordinate ids*: the group acts on the tensor by
  ``T'[p] = sum_q M[C[p], C[q]] T[q]`` over positions ``q`` in the same fibre; ``-1`` marks positions it leaves
  alone. Coordinates are grouped into blocks by the solver; a block is GL, a scaled 2x2 rotation (RoPE commutant),
  a signed scalar or a positive scalar.
* additive probes (``kind="add"``) carry *value labels*: the action adds ``delta`` with ``delta[p] = v[L[p]]``
  (positions with equal labels move by the same amount, ``-1`` means zero). Softmax, layer norm and the loss absorb
  a delta that is constant along their axis; a bias absorbs a delta that has its shape.

Index-moving ops apply the same numpy operation to the array, so views, transposes, slices, concatenation, GQA
expansion and head splitting need no special cases. Each op rule records constraints (fibres, kinds, dual ties,
legs, kills) in the :class:`Constraints` store; :mod:`gaugec.discover.solve` turns them into gauges.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
from typing import Callable

import numpy as np
import torch
import torch.fx

from gaugec.capture import GaugeGraph

# ---------------------------------------------------------------------------------------------------------------
# graph helpers


def op_name(node: torch.fx.Node) -> str:
    """'view', 'linear', 'add', ... for ATen call_function nodes; '<builtin getitem>' style names otherwise."""
    if node.op != "call_function":
        return node.op
    t = node.target
    schema = getattr(t, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(t, "__name__", str(t))


def node_shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def arg(node: torch.fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def varying_axes(a: np.ndarray) -> set[int]:
    """Axes along which the array is not constant."""
    out = set()
    for ax in range(a.ndim):
        if a.shape[ax] > 1:
            first = np.take(a, [0], axis=ax)
            if not np.all(a == first):
                out.add(ax)
    return out


# ---------------------------------------------------------------------------------------------------------------
# probes and constraints


@dataclasses.dataclass
class Leg:
    """How a parameter moves under a group action.

    role "out":   p <- M p along ``axis`` (the writer side; M built from the blocks of ``coords``)
    role "in":    p <- M^-T p along ``axis`` (the reader side; W <- W M^-1 for a linear)
    role "gain":  p <- m (p + offset) - offset, M diagonal (Gemma-style (offset + w) gains; offset 0 is a plain gain)
    role "shift": p <- p + 1 (x) t, t a free vector over the axes not in ``axes`` (broadcast over ``axes``)
    role "absorb": p <- p - delta, delta read off the tensor that reaches the bias at ``node`` (additive absorbers)
    """

    param: str
    role: str
    axis: int = 0
    coords: np.ndarray | None = None     # global coordinate id per index along axis (-1: untouched)
    offset: float = 0.0
    axes: tuple[int, ...] = ()          # broadcast axes for role "shift"
    node: str = ""                       # graph node where the leg was found
    site: str = ""                       # node name of the tensor an absorber reads (role "absorb")
    site_index: np.ndarray | None = None  # flat positions of that tensor giving each bias element (role "absorb")
    select: np.ndarray | None = None      # role "shift": the entries of t that move (None: all)


@dataclasses.dataclass
class Probe:
    id: int
    kind: str                 # "mult" | "add"
    seed: str                 # seed kind: "gl" | "diag" | "row_shift" | "translation"
    node: torch.fx.Node
    initial: np.ndarray
    coord_base: int = 0
    coord_count: int = 0
    legs: list = dataclasses.field(default_factory=list)
    tags: set = dataclasses.field(default_factory=set)
    citations: list = dataclasses.field(default_factory=list)   # (lemma id, node name, coordinate arrays or None)
    refusals: list = dataclasses.field(default_factory=list)    # (node name, reason)
    dead: bool = False
    sinks: list = dataclasses.field(default_factory=list)       # (node name, what)
    describe: str = ""


class Constraints:
    """Everything the rules learn, over global coordinate ids (kept as arrays: full-size models have millions)."""

    def __init__(self):
        self.n_coords = 0
        self.ranges: list[tuple[int, int, int, str]] = []   # (base, count, probe id, "gl" | "scalar")
        self.fibres: list[np.ndarray] = []
        self._fibre_keys: set = set()
        self.kinds: list[tuple[str, np.ndarray]] = []      # ("pos" | "scalar", coords) or ("rot2", [k, 2] pairs)
        self.kills: list[tuple[np.ndarray, str, str]] = []  # (coords, reason, node)
        self.half_edges: dict[str, dict[str, list]] = {}    # node -> side -> [(probe id, C)]
        self.tags: dict[str, list[np.ndarray]] = {}         # tag -> coordinates that met it (families are per block)

    def new_coords(self, n: int, probe_id: int, kind: str) -> int:
        base = self.n_coords
        self.n_coords += n
        self.ranges.append((base, n, probe_id, kind))
        return base

    def add_fibres(self, C: np.ndarray, axes: list[int]):
        axes = [norm_dim(a, C.ndim) for a in axes]
        rest = [a for a in range(C.ndim) if a not in axes]
        rows = np.transpose(C, rest + axes).reshape(-1, int(np.prod([C.shape[a] for a in axes], dtype=np.int64)))
        if rows.shape[0] > 1:
            rows = unique_rows(rows)
        for row in rows:
            row = np.unique(row[row >= 0])
            if len(row) > 1:
                key = row.tobytes()     # the exact coordinate set: a hash collision must never drop a fibre
                if key not in self._fibre_keys:
                    self._fibre_keys.add(key)
                    self.fibres.append(row)

    def kill(self, coords, reason: str, where: str = ""):
        coords = np.asarray(coords).reshape(-1)
        coords = coords[coords >= 0]
        if coords.size:
            self.kills.append((np.unique(coords), reason, where))

    def restrict(self, coords, kind: str):
        coords = np.unique(np.asarray(coords))
        self.kinds.append((kind, coords[coords >= 0]))

    def tag(self, coords, tag: str):
        coords = np.unique(np.asarray(coords))
        self.tags.setdefault(tag, []).append(coords[coords >= 0])


def unique_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of an integer matrix (as np.unique(rows, axis=0), in first-seen order)."""
    if rows.shape[0] <= 1 or rows.shape[1] == 0:
        return rows
    cls = row_classes(rows)
    _, first = np.unique(cls, return_index=True)
    return rows[np.sort(first)]


@functools.lru_cache(maxsize=64)
def _row_hash_weights(width: int) -> np.ndarray:
    rng = np.random.default_rng(0x9A06EC)
    return rng.integers(1, 2 ** 62, size=width, dtype=np.int64).astype(np.uint64)


def _row_hash(rows: np.ndarray) -> np.ndarray:
    w = _row_hash_weights(rows.shape[1])
    return (rows.astype(np.uint64) * w).sum(axis=1) + (rows.astype(np.uint64) ^ (w >> np.uint64(7))).sum(axis=1)


def row_classes(rows: np.ndarray) -> np.ndarray:
    """A class id per row, equal for equal rows (np.unique(rows, axis=0, return_inverse=True)[1], faster)."""
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inv = np.unique(_row_hash(rows), return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if not np.array_equal(rows[first[inv]], rows):   # a hash collision: never trust it, use the exact route
        _, inv = np.unique(rows, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    return inv


# ---------------------------------------------------------------------------------------------------------------
# rule registry

MULT_RULES: dict[str, Callable] = {}
ADD_RULES: dict[str, Callable] = {}
INDEX_RULES: dict[str, Callable] = {}     # pure array maps shared by every probe kind and by parameter views
SEED_RULES: dict[str, Callable] = {}
BARRIERS: dict[str, str] = {}             # op -> reason (explicit refusals, shown by --explain)


def rule(*names: str, kind: str):
    """Register ``fn(ctx, node) -> state | None`` for ops ``names``; kind is "mult", "add", "both" or "seed"."""

    def deco(fn):
        tables = {"mult": [MULT_RULES], "add": [ADD_RULES], "both": [MULT_RULES, ADD_RULES],
                  "seed": [SEED_RULES], "index": [INDEX_RULES]}[kind]
        for table in tables:
            for n in names:
                table[n] = fn
        return fn

    return deco


def barrier(reason: str, *names: str):
    for n in names:
        BARRIERS[n] = reason


# ---------------------------------------------------------------------------------------------------------------
# parameter views: tensors that are a parameter moved by index ops (W.t(), gamma.view(1, C, 1, 1), 1 + w)


@dataclasses.dataclass
class ParamView:
    """A tensor that is a parameter moved by index ops: ``idx[k]`` gives, per position of the view, the index
    along parameter axis k. Each is kept broadcastable (zero-copy for transposes and expands), so full-size
    weights never materialise a per-element array; ``P`` (flat index per position) is built on demand."""

    param: str
    idx: tuple              # one integer array per parameter axis, broadcastable to the view's shape
    pshape: tuple           # the parameter's shape
    offset: float = 0.0     # the view is (offset + w), e.g. Gemma gains

    @classmethod
    def of(cls, param: str, pshape: tuple) -> "ParamView":
        nd = len(pshape)
        idx = tuple(np.arange(s).reshape([s if a == k else 1 for a in range(nd)]) for k, s in enumerate(pshape))
        shape = tuple(pshape)
        return cls(param, tuple(np.broadcast_to(i, shape) for i in idx), shape)

    @property
    def shape(self) -> tuple:
        return np.broadcast_shapes(*[i.shape for i in self.idx]) if self.idx else ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _flat_index(self, per_axis) -> np.ndarray:
        """Row-major flat parameter index from one index array per parameter axis."""
        flat, stride = 0, 1
        for k in reversed(range(len(self.pshape))):
            flat = flat + per_axis[k] * stride
            stride *= self.pshape[k]
        return np.asarray(flat, dtype=np.int64)

    @property
    def P(self) -> np.ndarray:
        shape = self.shape
        return self._flat_index([np.broadcast_to(i, shape) for i in self.idx])

    def fibre(self, axis: int) -> np.ndarray:
        """Flat parameter index along ``axis`` of the view, at index 0 of every other axis."""
        sl = tuple(slice(None) if a == axis else 0 for a in range(self.ndim))
        shape = self.shape
        return self._flat_index([np.broadcast_to(i, shape)[sl] for i in self.idx])


@dataclasses.dataclass
class RopeMacro:
    """q * cos + rotate_half(q) * sin, recognised as one rotary op on ``x`` along ``axis``."""

    add: torch.fx.Node
    x: torch.fx.Node
    axis: int
    pairs: list            # (i, j): positions along axis rotated together, J e_i = e_j
    style: str             # "half" | "interleaved"
    internal: set


class Engine:
    def __init__(self, gg: GaugeGraph, loss: str | None, f_leaves: list[int] | None = None):
        self.gg = gg
        self.loss = loss
        self.graph = gg.graph
        self.topo = list(self.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.topo)}
        self.cons = Constraints()
        self.probes: list[Probe] = []
        self.param_views: dict[torch.fx.Node, ParamView] = {}
        self.rope: dict[torch.fx.Node, RopeMacro] = {}
        self.rope_internal: dict[torch.fx.Node, RopeMacro] = {}
        self.unknown_ops: dict[str, int] = {}
        self.output_node = next(n for n in reversed(self.topo) if n.op == "output")
        # what f is: these output nodes must be left unchanged; the loss's shift invariance applies to a single one
        users = gg.user_output_nodes()
        self.f_outputs = {users[i] for i in (gg.f_leaves() if f_leaves is None else f_leaves)}
        self.reaches_f = self._ancestors(self.f_outputs)   # a branch that never reaches f constrains nothing
        self._fresh = 0
        self._build_param_views()

    @staticmethod
    def _ancestors(nodes) -> set:
        seen, stack = set(nodes), [n for n in nodes if isinstance(n, torch.fx.Node)]
        while stack:
            for a in stack.pop().all_input_nodes:
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

    def param_uses(self) -> dict[str, set[str]]:
        """parameter -> names of the nodes that use it (through parameter views)."""
        uses: dict[str, set[str]] = {}
        for n in self.topo:
            if n in self.param_views or n.op == "output":
                continue
            for a in n.all_input_nodes:
                pv = self.param_views.get(a)
                if pv is not None:
                    uses.setdefault(pv.param, set()).add(n.name)
        return uses

    def _build_param_views(self):
        from gaugec.discover.rules.index import apply_index_op

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

    # -- seeding and running -----------------------------------------------------------------------------------
    def seed_all(self):
        for n in self.topo:
            if n.op != "call_function":
                continue
            fn = SEED_RULES.get(op_name(n))
            if fn is not None:
                fn(SeedCtx(self, n), n)

    def add_probe(self, kind, seed, node, initial, coord_kind=None, describe="") -> Probe:
        p = Probe(len(self.probes), kind, seed, node, initial, describe=describe)
        if kind == "mult":
            n = int(initial.max()) + 1 if initial.size else 0
            p.coord_base = self.cons.new_coords(n, p.id, coord_kind or "gl")
            p.coord_count = n
            p.initial = np.where(initial >= 0, initial + p.coord_base, -1)
        self.probes.append(p)
        return p

    def run(self):
        for probe in self.probes:
            self._run_probe(probe)

    def _run_probe(self, probe: Probe):
        state: dict[torch.fx.Node, object] = {probe.node: probe.initial}
        heap: list[int] = []
        pending: set[torch.fx.Node] = set()

        def push_users(n):
            for u in n.users:
                if u not in pending and (u.op == "output" or u in self.reaches_f):
                    pending.add(u)
                    heapq.heappush(heap, self.index[u])

        push_users(probe.node)
        while heap and not probe.dead:
            node = self.topo[heapq.heappop(heap)]
            pending.discard(node)
            if node.op == "output":
                self._at_output(probe, node, state)
                continue
            macro = self.rope_internal.get(node)
            if macro is not None and node is not macro.add:
                # inside a recognised rotary op: the whole op is evaluated at its output node
                if macro.add not in pending:
                    pending.add(macro.add)
                    heapq.heappush(heap, self.index[macro.add])
                continue
            ctx = RuleCtx(self, probe, node, state)
            out = ctx.dispatch(macro)
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
        return [a for a in self.node.all_input_nodes if a in self._state]

    def dispatch(self, macro: "RopeMacro | None" = None):
        """Apply the node's rule (or the recognised rotary op ending here); no rule means a barrier."""
        from gaugec.discover.rules.index import apply_index_op
        from gaugec.discover.rules.rope import rope_rule

        name = "rotary embedding" if macro is not None else op_name(self.node)
        fn = None
        try:
            if macro is not None:
                return rope_rule(self, self.node, macro)
            if name in INDEX_RULES:
                self.cite("index_transport")
                return apply_index_op(self.engine, self.node, self._state, fill=-1)
            table = MULT_RULES if self.mult else ADD_RULES
            fn = table.get(name)
            if fn is not None:
                return fn(self, self.node)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot handle this node is a barrier, never a crash
            return self.kill_all(f"the rule for '{name}' could not handle this node ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})")
        if fn is None:
            reason = BARRIERS.get(name)
            if reason is None:
                reason = f"no rule for op '{name}' (a barrier: nothing crosses it)"
                self.engine.unknown_ops[name] = self.engine.unknown_ops.get(name, 0) + 1
            return self.kill_all(reason)

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

    def leg(self, param: str, role: str, **kw):
        self.probe.legs.append(Leg(param, role, node=self.node.name, **kw))

    def fibres(self, C, axes):
        self.cons.add_fibres(C, axes)

    def restrict(self, C: np.ndarray, kind: str):
        """Every coordinate of C gets a one-dimensional block of ``kind`` ("pos" or "scalar")."""
        self.cons.restrict(C, kind)

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


def param_axis_coords(P: np.ndarray, C: np.ndarray, shape: tuple[int, ...]):
    """Find the parameter axis that carries the coordinates C, for a parameter view P used beside C.

    P and C broadcast together (P: flat parameter index per position). Returns (axis, coordinate per index along
    that axis, -1 where untouched) or None when no single axis carries them consistently.
    """
    P, C = np.broadcast_arrays(P, C)
    flatP, flatC = P.reshape(-1), C.reshape(-1)
    if not (flatC >= 0).any():
        return None
    idx = np.unravel_index(flatP, shape)
    for ax in range(len(shape)):
        keys, first, inv = np.unique(idx[ax], return_index=True, return_inverse=True)
        if not np.array_equal(flatC[first][inv.reshape(-1)], flatC):
            continue  # one parameter index meets two coordinates along this axis
        coords = np.full(shape[ax], -1, dtype=np.int64)
        coords[keys] = flatC[first]
        if (coords >= 0).any():
            return ax, coords
    return None
