"""GaugePlan: the compiled list of proven gauges, bound to a model."""
from __future__ import annotations

import itertools
import json

import numpy as np
import torch

from gaugec.capture import capture, param_offsets, unique_named_parameters
from gaugec.plan import Gauge, Leg, PlanMismatchError, apply_mult_leg, conj_gain, shift_from_vector, shift_weight
from gaugec.plan.runner import GraphRunner
from gaugec.plan import tangent as tangent_space
from gaugec.prove import Proof
from gaugec.prove.numeric import numeric_check

PLAN_FORMAT = "gaugec-plan/1"


class GaugePlan:
    """Proven gauges of one model, with generators, group elements and the action on the model's parameters.

    ``tangent_basis()`` columns follow ``model.named_parameters()`` with tied tensors once.
    """

    def __init__(self, model: torch.nn.Module, gauges: list[Gauge], loss=None, graph=None, example_inputs=None,
                 refusals=None, rejected=None, unknown_ops=None, timings=None, f_leaves=None):
        self.model = model
        self.gauges = gauges
        self.loss = loss
        self.graph = graph
        self.example_inputs = example_inputs
        self.refusals = refusals or []
        self.rejected = rejected or []       # gauges whose numeric check or proof failed: never in .gauges
        self.unknown_ops = unknown_ops or {}
        self.timings = timings or {}
        self.discovery_from_memo = False    # compile read the gauges from the discovery memo
        self.f_leaves = f_leaves             # which output leaves f is made of (None: gaugec.functional.output_leaves)
        self._param_info = unique_named_parameters(model)
        self._check_model()

    # -- model binding ---------------------------------------------------------------------------------------------
    def _check_model(self):
        for g in self.gauges:
            for lg in g.legs:
                info = self._param_info.get(lg.param)
                if info is None:
                    raise PlanMismatchError(f"gauge {g.name}: parameter {lg.param!r} is not in the model")
                if lg.conj:
                    gain = self._param_info.get(lg.conj)
                    along = len(lg.entries) if lg.entries is not None else (
                        lg.part_shape(tuple(info.shape))[lg.axes[0]] if len(lg.axes) == 1 else -1)
                    if gain is None or lg.conj_index is None or len(lg.conj_index) != along \
                            or int(lg.conj_index.max()) >= int(np.prod(gain.shape)) \
                            or lg.conj in {other.param for other in g.legs}:
                        raise PlanMismatchError(f"gauge {g.name}: the leg on {lg.param} is conjugated by {lg.conj!r}, "
                                                f"which does not match the model or is moved by the same gauge")
                if lg.entries is not None:
                    if lg.axis >= len(info.shape) or info.shape[lg.axis] != len(lg.entries):
                        raise PlanMismatchError(
                            f"gauge {g.name}: parameter {lg.param} has shape {info.shape}, the plan expects "
                            f"{len(lg.entries)} entries along axis {lg.axis}")

    def _params(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters(remove_duplicate=False))
        return {name: named[name] for name in self._param_info}

    @property
    def n_params(self) -> int:
        return int(sum(np.prod(i.shape, dtype=np.int64) for i in self._param_info.values()))

    @property
    def dim(self) -> int:
        """Total orbit dimension found: the rank of the tangent basis at the model's parameters, from the plan's
        structure without forming it (:func:`gaugec.plan.tangent.orbit_dimension`); the sum of the gauge dimensions
        for a model on the meta device, whose generators cannot be evaluated."""
        if not self.gauges:
            return 0
        if self.model_is_meta():
            return sum(g.dim for g in self.gauges)
        return tangent_space.orbit_dimension(self)

    def tangent_operator(self, params: dict[str, torch.Tensor] | None = None) -> "tangent_space.TangentOperator":
        """The tangent basis B as an operator (matvec(c) = Bᵀc, rmatvec(v) = Bv), at any size."""
        return tangent_space.TangentOperator(self, params)

    def bind(self, model: torch.nn.Module) -> "GaugePlan":
        """The same gauges on another model of the same architecture (a copy, a float64 twin, a fresh init)."""
        info = unique_named_parameters(model)
        mine = self.signature()
        theirs = {name: list(i.shape) for name, i in info.items()}
        if mine != theirs:
            diff = [n for n in dict.fromkeys([*mine, *theirs]) if mine.get(n) != theirs.get(n)][:3]
            raise PlanMismatchError(f"cannot bind the plan: parameters differ ({', '.join(diff)})")
        return GaugePlan(model, self.gauges, loss=self.loss, graph=self.graph, example_inputs=self.example_inputs,
                         refusals=self.refusals, rejected=self.rejected, unknown_ops=self.unknown_ops,
                         timings=self.timings, f_leaves=self.f_leaves)

    def reject(self, gauges: list[Gauge]):
        """Move ``gauges`` (whose proof failed) from ``.gauges`` to ``.rejected``: they are never acted on."""
        self.rejected += [g for g in gauges if g not in self.rejected]
        self.gauges = [g for g in self.gauges if g not in gauges]

    def model_is_meta(self) -> bool:
        return any(p.is_meta for p in self.model.parameters())

    def _runner(self):
        return GraphRunner(self.graph, self.model, self.example_inputs)

    # -- generators ------------------------------------------------------------------------------------------------
    def gauge_tangents(self, gauge: Gauge, params: dict[str, torch.Tensor] | None = None,
                       layout: tuple[dict[str, int], int] | None = None) -> torch.Tensor:
        """Generators of one gauge at the current parameters: [gauge.dim, n_params] (float64). ``layout``
        (offsets, length): lay the columns out over those parameters only (a component of the plan)."""
        params = params if params is not None else self._params()
        offsets, total = layout if layout is not None else self._offsets()
        rows = []
        if gauge.kind == "mult":
            for b, X in gauge.algebra_basis():
                mats = [None] * len(gauge.blocks)
                mats[b] = X
                rows.append(tangent_space.add_flat(self.mult_tangent(gauge, mats, params), offsets,
                                                   torch.zeros(total, dtype=torch.float64)))
        else:
            for vec in torch.eye(gauge.additive_dim, dtype=torch.float64):
                rows.append(tangent_space.add_flat(self.additive_changes(gauge, vec, params), offsets,
                                                   torch.zeros(total, dtype=torch.float64)))
        return torch.stack(rows) if rows else torch.zeros(0, total, dtype=torch.float64)

    def mult_tangent(self, gauge: Gauge, mats: list, params) -> dict[str, torch.Tensor]:
        """Per moved parameter, the tangent of the algebra element ``mats`` (one matrix per block, None for 0):
        linear and differentiable in ``mats``."""
        tangent: dict[str, torch.Tensor] = {}
        for lg in gauge.legs:
            if lg.role != "absorb":
                t = apply_mult_leg(params[lg.param], lg, mats, tangent=True, gain=conj_gain(lg, params))
                tangent[lg.param] = tangent[lg.param] + t if lg.param in tangent else t
        absorbers = [lg for lg in gauge.legs if lg.role == "absorb"]
        if absorbers:
            self._absorb_tangent(absorbers, params, tangent)
        return tangent

    def _offsets(self):
        return param_offsets(self._param_info)

    def tangent_basis(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """[sum of gauge dims, n_params]: every gauge's generators at the model's current θ (or at ``params``), dense,
        for small models; above BASIS_LIMIT entries it refuses (use :meth:`tangent_operator`)."""
        k, n = sum(g.dim for g in self.gauges), self._offsets()[1]
        if k * n > tangent_space.BASIS_LIMIT:
            raise ValueError(f"the tangent basis would be {k} x {n} dense ({k * n * 8 / 2**30:.1f} GiB): use "
                             f"plan.tangent_operator() (matvec / rmatvec without forming it)")
        params = self._params() if params is None else params
        parts = [self.gauge_tangents(g, params) for g in self.gauges]
        if not parts:
            return torch.zeros(0, self._offsets()[1], dtype=torch.float64)
        return torch.cat(parts, 0)

    # -- group action ----------------------------------------------------------------------------------------------
    def random_element(self, generator: torch.Generator | None = None, spread: float = 10.0,
                       gl_spread: float | None = None):
        """A random group element: one element per gauge (a list, in plan order)."""
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        return [g.random_element(gen, spread, gl_spread) for g in self.gauges]

    @torch.no_grad()
    def act(self, g, gauges: list[Gauge] | None = None):
        """Apply the group element g (from random_element) to the model's parameters in place."""
        gauges = self.gauges if gauges is None else gauges
        if len(g) != len(gauges):
            raise PlanMismatchError(f"group element has {len(g)} parts, the plan has {len(gauges)} gauges")
        params = self._params()
        reads = AbsorbReads()
        for gauge, (kind, val) in zip(gauges, g):
            self.act_on(gauge, kind, val, params, reads)
            reads.changed.update(gauge.params)

    def act_on(self, gauge: Gauge, kind: str, val, params: dict[str, torch.Tensor],
               reads: "AbsorbReads | None" = None):
        """Apply one gauge's element (``kind``, ``val``) to the tensors of ``params`` in place. ``reads``: graph
        values shared by the gauges of one :meth:`act` (see :class:`AbsorbReads`)."""
        if kind != gauge.kind:
            raise PlanMismatchError(f"element of kind {kind} for gauge {gauge.name} of kind {gauge.kind}")
        if kind == "mult":
            new = {}
            for lg in gauge.legs:       # a conjugating gain is never moved by the gauge it conjugates
                if lg.role != "absorb":
                    src = new.get(lg.param, params[lg.param])
                    new[lg.param] = apply_mult_leg(src, lg, val, gain=conj_gain(lg, params))
            absorbers = [lg for lg in gauge.legs if lg.role == "absorb"]
            if absorbers:               # biases that take what still reaches them (a batch norm's, for its input scale)
                changes = {name: t - params[name].detach().to(torch.float64) for name, t in new.items()}
                for name, d in self._absorb(absorbers, params, changes, reads).items():
                    new[name] = params[name].detach().to(torch.float64) + d
            for name, t in new.items():
                params[name].copy_(t.to(params[name].dtype))
        else:
            for name, d in self.additive_changes(gauge, val, params, reads).items():
                params[name].add_(d.to(device=params[name].device, dtype=params[name].dtype))

    def additive_changes(self, gauge: Gauge, vec: torch.Tensor, params,
                         reads: "AbsorbReads | None" = None) -> dict[str, torch.Tensor]:
        """Per moved parameter, the change of translation ``vec`` (float64): the seed shift plus minus what
        reaches each absorbing bias."""
        changes: dict[str, torch.Tensor] = {}
        k = 0
        for lg in gauge.legs:
            if lg.role != "shift":
                continue
            shape = tuple(params[lg.param].shape)
            n = lg.shift_dim(shape)
            t = shift_from_vector(lg.part_shape(shape), lg.axes, vec[k:k + n].cpu(), lg.select,
                                  shift_weight(lg, params))
            if lg.part:                 # one expert's slice of a stacked weight
                whole = torch.zeros(shape, dtype=t.dtype)
                lg.slice_of(whole)[0].copy_(t)
                t = whole
            k += n
            changes[lg.param] = changes[lg.param] + t if lg.param in changes else t
        absorbers = [lg for lg in gauge.legs if lg.role == "absorb"]
        return self._absorb(absorbers, params, changes, reads) if absorbers else changes

    def _absorber_order(self, absorbers):
        runner = self._runner()
        order = {n.name: i for i, n in enumerate(runner.gg.graph.nodes)}
        return runner, sorted(absorbers, key=lambda lg: order[lg.site])

    def _absorb(self, absorbers, params, changes: dict[str, torch.Tensor],
                reads: "AbsorbReads | None" = None) -> dict[str, torch.Tensor]:
        """``changes`` (float64, per parameter) with every absorbing bias's compensation added: each bias cancels
        what reaches its site once the biases before it (in graph order) have cancelled theirs."""
        runner, absorbers = self._absorber_order(absorbers)
        point = {n: p.detach().to(torch.float64) for n, p in params.items()}
        sites = {lg.site for lg in absorbers}
        reads = reads if reads is not None else AbsorbReads()
        if reads.base is None or not sites <= reads.base.keys():
            # every node up to the last site once, at the current parameters
            reads.base, reads.changed = runner.values(point, sites, keep_all=True), set()
        # then each read recomputes only the nodes that the parameters moved since the base reach
        ref = reads.base if not reads.changed else runner.values(point, sites, base=reads.base,
                                                                  changed=reads.changed)
        current = {n: p + changes[n].to(p.device) if n in changes else p for n, p in point.items()}
        for lg in absorbers:
            after = runner.values(current, {lg.site}, base=reads.base, changed=reads.changed | set(changes))
            diff = (after[lg.site] - ref[lg.site].to(torch.float64)).reshape(-1)
            comp = -diff[torch.as_tensor(lg.site_index, device=diff.device)].cpu()
            comp = comp.reshape(params[lg.param].shape)
            changes[lg.param] = changes[lg.param] + comp if lg.param in changes else comp
            current[lg.param] = current[lg.param] + comp.to(current[lg.param].device)
        return changes

    def _absorb_tangent(self, absorbers, params, tangent: dict[str, torch.Tensor]):
        """The first-order version of :meth:`_absorb`, in place on ``tangent``: each bias cancels the derivative of
        its site along the tangent (forward-mode AD through the captured graph)."""
        runner, absorbers = self._absorber_order(absorbers)
        point = {n: p.detach().to(torch.float64) for n, p in params.items()}
        for lg in absorbers:
            direction = {n: tangent[n].to(point[n].device) if n in tangent else torch.zeros_like(point[n])
                         for n in point}
            _, d = torch.func.jvp(lambda p: runner.values(p, {lg.site})[lg.site], (point,), (direction,))
            comp = -d.reshape(-1)[torch.as_tensor(lg.site_index, device=d.device)].cpu()
            comp = comp.reshape(params[lg.param].shape).to(torch.float64)
            tangent[lg.param] = tangent[lg.param] + comp if lg.param in tangent else comp

    # -- serialisation ---------------------------------------------------------------------------------------------
    def signature(self) -> dict:
        return {name: list(info.shape) for name, info in self._param_info.items()}

    def to_json(self, indent: int | None = None) -> str:
        data = {
            "format": PLAN_FORMAT,
            "loss": self.loss,
            "model_signature": self.signature(),
            "graph_signature": self.graph.signature() if self.graph is not None else None,
            "tracer": self.graph.tracer if self.graph is not None else "export",
            "f_leaves": self.f_leaves,
            "gauges": [gauge_to_dict(g) for g in self.gauges],
        }
        return json.dumps(data, indent=indent)

    @classmethod
    def from_json(cls, text: str, model: torch.nn.Module, example_inputs=None, trust: bool = False) -> "GaugePlan":
        """Load a plan and bind it to ``model``, re-checking every gauge against it: the captured graph must have
        the plan's signature, every cited lemma must hold under sympy at a node of that graph, and a large random
        element of every gauge must leave the float64 model's f unchanged. A plan that fails any of these raises
        :class:`PlanMismatchError`. ``trust=True`` skips the checks (only the parameter shapes are compared): for
        a plan you wrote yourself, when loading speed matters."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise PlanMismatchError(f"plan JSON is corrupted: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanMismatchError(f"not a gaugec plan (expected format {PLAN_FORMAT!r})")
        try:
            gauges = [gauge_from_dict(d) for d in data["gauges"]]
            f_leaves = data.get("f_leaves")
            f_leaves = None if f_leaves is None else [int(i) for i in f_leaves]
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanMismatchError(f"plan JSON is corrupted: {type(exc).__name__}: {exc}") from exc
        sig = data.get("model_signature", {})
        info = unique_named_parameters(model)
        for name, shape in sig.items():
            if name not in info:
                raise PlanMismatchError(f"the plan's parameter {name!r} is not in the model")
            if list(info[name].shape) != list(shape):
                raise PlanMismatchError(f"parameter {name}: model shape {list(info[name].shape)}, plan {shape}")
        if example_inputs is None and not trust:
            raise PlanMismatchError("a plan is verified against the model when it is loaded: pass example_inputs "
                                    "(or trust=True to skip the checks)")
        graph = None
        if example_inputs is not None:
            if not isinstance(example_inputs, tuple):
                example_inputs = (example_inputs,)
            graph = capture(model, example_inputs, tracer=data.get("tracer", "export"))
        plan = cls(model, gauges, loss=data.get("loss"), graph=graph, example_inputs=example_inputs,
                   f_leaves=f_leaves)
        if not trust:
            plan._verify_loaded(data.get("graph_signature"))
        return plan

    def _verify_loaded(self, graph_signature):
        if graph_signature != self.graph.signature():
            raise PlanMismatchError("the plan was compiled from another graph (other ops or shapes, e.g. GELU where "
                                    "it had ReLU, or another torch version's decompositions): recompile it")
        nodes = {n.name for n in self.graph.graph.nodes}
        for g in self.gauges:
            if g.proof is None or not g.proof.steps:
                raise PlanMismatchError(f"gauge {g.name} carries no proof")
            missing = [node for _, node in g.proof.steps if node and node not in nodes]
            if missing:
                raise PlanMismatchError(f"gauge {g.name} cites lemmas at nodes the graph does not have: {missing[:3]}")
            if not g.proof.check():
                raise PlanMismatchError(f"gauge {g.name}: proof {g.proof.status}")
        if not self.model_is_meta():
            numeric_check(self)
            for g in self.gauges:
                if g.proof.numeric_ok is None:
                    raise PlanMismatchError(f"gauge {g.name} cannot be checked numerically: "
                                            f"{g.proof.numeric_note}")
                if not g.proof.numeric_ok:
                    raise PlanMismatchError(f"gauge {g.name} changes the model's output on this model (relative "
                                            f"residual {g.numeric_residual:.1e}): the plan is false here")

    def __repr__(self):
        return f"GaugePlan({len(self.gauges)} gauges, {sum(g.dim for g in self.gauges)} generators)"


class AbsorbReads:
    """Node values of the captured graph at some parameters (``base``) and which parameters have moved since
    (``changed``): the gauges of one :meth:`GaugePlan.act` read their absorbing sites from one base run, each read
    recomputing only the nodes downstream of what moved. Applied in reverse graph order (latest site first), what
    moved is mostly downstream of the next site, so a read costs a few nodes."""

    def __init__(self):
        self.base: dict | None = None
        self.changed: set[str] = set()


def gauge_to_dict(g: Gauge, arrays: list | None = None) -> dict:
    """JSON-ready. With ``arrays`` (the compact form of the discovery memo), the index arrays go there
    (:meth:`Leg.to_dict`), blocks are run-length encoded as [kind, size, count] and the derived ``dim`` and
    ``group`` are left out (an 8B model has ~5·10⁵ blocks)."""
    d = {"name": g.name, "family": g.family, "kind": g.kind}
    if arrays is None:
        d.update(group=g.group, dim=g.dim, blocks=[list(b) for b in g.blocks])
    else:
        d["blocks"] = [[kind, size, sum(1 for _ in run)] for (kind, size), run in itertools.groupby(g.blocks)]
    d.update(additive_dim=g.additive_dim, legs=[lg.to_dict(arrays) for lg in g.legs],
             proof=g.proof.to_dict() if g.proof is not None else None, numeric_residual=g.numeric_residual,
             exact=g.exact, description=g.description)
    return d


def gauge_from_dict(d: dict, arrays: list | None = None) -> Gauge:
    """The inverse of :func:`gauge_to_dict` (with the same ``arrays``)."""
    if arrays is None:
        blocks = [(str(k), int(m)) for k, m in d["blocks"]]
    else:
        blocks = []
        for k, m, count in d["blocks"]:
            blocks.extend([(str(k), int(m))] * int(count))
    g = Gauge(d["name"], d["family"], d["kind"], blocks,
              [Leg.from_dict(x, arrays) for x in d["legs"]], additive_dim=int(d.get("additive_dim", 0)),
              numeric_residual=d.get("numeric_residual"), exact=bool(d.get("exact", True)),
              description=list(d.get("description", [])))
    if d.get("proof") is not None:
        g.proof = Proof.from_dict(d["proof"])
    if g.kind not in ("mult", "add"):
        raise ValueError(f"unknown gauge kind {g.kind!r}")
    return g
