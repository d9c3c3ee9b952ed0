"""The canonical frame shared by every DDC optimizer: binding to the plan, the first canonicalisation, the per-step
return to the section, skipped non-finite steps and the state-dict entry (docs/ddc.md).

A subclass supplies the base step (:meth:`CanonicalFrameOptimizer._base_step`, run in the canonical frame) and the
per-parameter state it keeps; everything else — which parameters may be written, held blocks, the skip flag that
never synchronises the host, bit-exact resume — is here once.
"""
from __future__ import annotations

import warnings

import torch

from gaugec.optim.section import OrbitExecutor, PhaseClock, Shard, one_sided
from gaugec.plan import PlanMismatchError


class CanonicalFrameOptimizer(torch.optim.Optimizer):
    """A base optimizer run in the canonical frame of the gauges of ``plan``.

    ``rebalance_sweeps`` (default 1) is the number of Gauss–Seidel sweeps per step that return the multiplicative
    blocks to the section; 0 keeps only the first canonicalisation (the design's ablation arm).
    """

    #: the per-parameter state tensors that must have the parameter's shape (checked on load)
    STATE_LIKE_PARAM: tuple[str, ...] = ()

    def __init__(self, params, plan, defaults: dict, *, rebalance_sweeps: int = 1, canonicalise: bool = True,
                 canonical_tol: float | None = None, max_canonical_sweeps: int = 500):
        super().__init__(params, defaults)
        self.plan = plan
        self.rebalance_sweeps = int(rebalance_sweeps)
        self.canonical_tol = canonical_tol
        self.max_canonical_sweeps = max_canonical_sweeps
        self._named, excluded = self._bind(plan)
        self._context = {n: p for n, p in plan._params().items() if n not in self._named}
        self.executor = OrbitExecutor(plan, excluded=excluded)
        devices = {p.device for p in self._named.values()}
        if len(devices) > 1:
            raise ValueError(f"{type(self).__name__}: the gauged parameters live on several devices "
                             f"{sorted(map(str, devices))}")
        self._device = next(iter(devices)) if devices else torch.device("cpu")
        self.executor.to(self._device)
        # FSDP2: parameters sharded along dim 0 (DTensors); the per-step work runs on each rank's rows
        self._shards, self._group = sharded_parameters({**self._named, **self._context})
        self._local_executor = self.executor.localised(self._shards, self._group).to(self._device) \
            if self._shards else self.executor
        # sharded gains a weighted translation seed reads whole (a LayerNorm's γ: a vector, gathered per step)
        self._sharded_gains = sorted({sl.gain for legs in self._local_executor.seeds for sl in legs
                                      if sl.gain in self._shards})
        self.canonical = False
        self.canonical_report: dict = {}
        self._skipped = torch.zeros((), dtype=torch.float32, device=self._device)
        if canonicalise:
            self.canonicalise()

    def _bind(self, plan) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The plan's parameters this optimizer may write (owned and trainable), and why each other one may not."""
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        named = dict(plan.model.named_parameters(remove_duplicate=False))
        out, excluded = {}, {}
        for name, info in plan._param_info.items():
            p = named.get(name)
            if p is None:
                raise PlanMismatchError(f"the plan's parameter {name!r} is not in its model any more")
            if tuple(p.shape) != tuple(info.shape):
                raise PlanMismatchError(f"parameter {name}: model shape {tuple(p.shape)}, plan {tuple(info.shape)}")
            if id(p) not in owned:
                excluded[name] = "not among this optimizer's parameters"
            elif not p.requires_grad:
                excluded[name] = "frozen (requires_grad=False)"
            else:
                out[name] = p
        gauged = {lg.param for g in plan.gauges for lg in g.legs}
        if gauged and not gauged & set(out):
            raise PlanMismatchError(
                "none of the plan's gauged parameters is among the optimizer's parameters: the plan belongs to "
                "another model; bind it to this one with plan.bind(model)")
        return out, excluded

    # -- the canonical frame ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def canonicalise(self) -> dict:
        """Move the parameters to the canonical section (done at construction; call it again after loading
        parameters from elsewhere into the model; the gradients of the next step must be taken afterwards)."""
        if self._shards:        # on whole copies (identical on every rank), each rank then keeps its rows
            gathered, context = _gathered(self._named), _gathered(self._context)
            self.canonical_report = self.executor.canonicalise(gathered, tol=self.canonical_tol,
                                                               max_sweeps=self.max_canonical_sweeps, context=context)
            for name, p in self._named.items():
                local_part(p).copy_(rows_of(gathered[name], self._shards.get(name)))
        else:
            self.canonical_report = self.executor.canonicalise(self._named, tol=self.canonical_tol,
                                                               max_sweeps=self.max_canonical_sweeps,
                                                               context=self._context)
        held = self.canonical_report["held"]
        if held:
            listing = ", ".join(f"{name} ({len(blocks)})" for name, blocks in held.items())
            never = [g.name for g in self.plan.gauges if g.name in held and one_sided(g)]
            note = (f"; {', '.join(never)}: the group moves one side only (a norm input scale), so its orbits "
                    "have no minimum-norm point and stay held") if never else ""
            warnings.warn(f"gaugec: {sum(map(len, held.values()))} block(s) lie on unstable orbits (a zero or "
                          f"rank-deficient leg) and are held where they are until training makes them stable: "
                          f"{listing}{note}", stacklevel=4)
        self.canonical = True
        return self.canonical_report

    def held_blocks(self) -> dict[str, list[int]]:
        """Per gauge, its blocks that lie on unstable orbits now (held where they are; synchronises the host)."""
        return self._local_executor.held_blocks(_locals(self._named))

    def phase_clock(self, on: bool = True) -> PhaseClock | None:
        """Turn the per-step time split on (a fresh :class:`PhaseClock`, whose ``totals`` sum the seconds of every
        later step per phase: non-finite check, base step, statistics, solves, application) or off (None)."""
        self._local_executor.clock = PhaseClock(self._device) if on else None
        return self._local_executor.clock

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient was not finite (reading it synchronises with the device)."""
        return int(self._skipped.item())

    # -- the step --------------------------------------------------------------------------------------------------
    def _found_inf(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """1.0 (a 0-dim device tensor) when any gradient holds NaN or inf."""
        norms = torch._foreach_norm([local_part(g) for g in grads])
        total = torch.stack([n.to(device=self._device, dtype=torch.float32) for n in norms]).sum()
        found = (~torch.isfinite(total)).to(torch.float32)
        if self._group is not None:      # one rank's NaN skips the step on every rank
            import torch.distributed as dist

            dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self._group)
        return found

    def _base_step(self, found_inf: torch.Tensor):
        """The base optimizer's update of every parameter with a gradient, in the canonical frame; a no-op, bit for
        bit, where ``found_inf`` is 1."""
        raise NotImplementedError

    def _grads(self) -> list[torch.Tensor]:
        grads = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    grads.append(p.grad)
        return grads

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = self._grads()
        if not grads:
            return loss
        clock = self._local_executor.clock
        if clock is not None:
            clock.start()
        found_inf = self._found_inf(grads)
        self._local_executor._lap("non-finite check")
        self._base_step(found_inf)
        self._skipped.add_(found_inf)
        self._local_executor._lap("base step")
        named = _locals(self._named)
        everything = {**self._named, **self._context}
        gains = {name: everything[name].full_tensor() for name in self._sharded_gains}   # one all-gather each
        self._local_executor.project_translations(named, skip=found_inf, context=_locals(self._context),
                                                  gains=gains)
        self._local_executor.rebalance(named, self.rebalance_sweeps, skip=found_inf)
        return loss

    # -- state -----------------------------------------------------------------------------------------------------
    def _gauge_names(self) -> list[str]:
        return [g.name for g in self.executor.mult_gauges + self.executor.add_gauges]

    def state_dict(self):
        """torch's optimizer state plus a "ddc" entry in every parameter group (the canonical flag, the skipped
        steps, the plan's signature and its gauges): inside the groups it survives
        ``torch.distributed.checkpoint``'s re-keying of the state by parameter name, which drops other top-level
        keys. Reading the skipped-step counter synchronises with the device."""
        sd = super().state_dict()
        meta = {"canonical": self.canonical, "skipped_steps": float(self._skipped.item()),
                "plan_signature": self.plan.signature(), "gauges": self._gauge_names()}
        for group in sd["param_groups"]:
            group["ddc"] = meta
        return sd

    def load_state_dict(self, state_dict):
        kind = type(self).__name__
        state_dict = dict(state_dict)
        groups = [dict(g) for g in state_dict.get("param_groups", [])]
        metas = [g.pop("ddc", None) for g in groups]
        state_dict["param_groups"] = groups
        ddc = metas[0] if metas else None
        if not isinstance(ddc, dict) or "canonical" not in ddc or any(m != ddc for m in metas):
            raise ValueError(f"not a {kind} state dict: the 'ddc' entry of its parameter groups is missing or "
                             "corrupted")
        if ddc.get("plan_signature") != self.plan.signature():
            raise PlanMismatchError("the state dict was saved for a plan of another model (parameter shapes differ)")
        if ddc.get("gauges") != self._gauge_names():
            raise PlanMismatchError("the state dict was saved with other gauges in the canonical frame")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                for key in self._state_keys(group):
                    t = st.get(key)
                    if t is None or t.shape != p.shape:
                        raise ValueError(f"corrupted {kind} state: {key} has shape "
                                         f"{None if t is None else tuple(t.shape)}, its parameter {tuple(p.shape)}")
                    if not bool(torch.isfinite(t).all()):
                        raise ValueError(f"corrupted {kind} state: {key} holds NaN or inf")
                if "step" in self._state_keys(group, scalars=True) and not torch.is_tensor(st.get("step")):
                    raise ValueError(f"corrupted {kind} state: 'step' is missing")
        self.canonical = bool(ddc["canonical"])
        self._skipped = torch.as_tensor(float(ddc["skipped_steps"]), dtype=torch.float32).to(self._device)

    def _state_keys(self, group: dict, scalars: bool = False) -> tuple[str, ...]:
        """The state a parameter of ``group`` keeps: tensors of its shape, or (``scalars``) its 0-dim counters."""
        return ()


# -- FSDP2 (DTensor) parameters --------------------------------------------------------------------------------------
def sharded_parameters(named: dict[str, torch.Tensor]) -> tuple[dict[str, Shard], object]:
    """The parameters FSDP2 split along dim 0 (``Shard(0)`` DTensors on a 1-D mesh): {name: the rows this rank
    holds}, and the mesh's process group (None when no parameter is a DTensor). A replicated DTensor is whole on
    every rank; any other placement is refused with a clear error."""
    try:
        from torch.distributed.tensor import DTensor, Replicate
        from torch.distributed.tensor import Shard as ShardPlacement
    except ImportError:        # a torch built without distributed
        return {}, None
    shards, mesh = {}, None
    for name, p in named.items():
        if not isinstance(p, DTensor):
            continue
        if p.device_mesh.ndim != 1 or len(p.placements) != 1:
            raise NotImplementedError(f"{name}: a DTensor on a {p.device_mesh.ndim}-D mesh (placements "
                                      f"{p.placements}); gaugec supports FSDP2's 1-D Shard(0) sharding")
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise NotImplementedError(f"{name}: the parameters live on different device meshes")
        place = p.placements[0]
        if isinstance(place, Replicate):
            continue
        if not isinstance(place, ShardPlacement) or place.dim != 0:
            raise NotImplementedError(f"{name}: placement {place}; gaugec supports FSDP2's Shard(0)")
        shards[name] = shard_of(p)
    return shards, (mesh.get_group() if mesh is not None else None)


def shard_of(p) -> Shard:
    """The rows of dim 0 a ``Shard(0)`` DTensor holds on this rank."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return Shard(int(offset[0]), int(offset[0]) + int(local_shape[0]), int(p.shape[0]))


def whole(local: torch.Tensor, like) -> torch.Tensor:
    """The whole tensor of which ``local`` is this rank's part, laid out as the DTensor ``like`` (one all-gather;
    FSDP2's uneven shards included)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride()).full_tensor()


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view: writes land in it); any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _locals(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: local_part(p) for name, p in named.items()}


def _gathered(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole copies of DTensors (one all-gather each, every rank in the same order); other tensors themselves."""
    return {name: p.full_tensor() if hasattr(p, "full_tensor") else p for name, p in named.items()}


def rows_of(full: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """This rank's rows of a whole tensor (all of it when the parameter is not sharded)."""
    return full if shard is None else full[shard.lo:shard.hi]
