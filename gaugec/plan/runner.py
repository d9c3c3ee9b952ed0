"""Run the captured graph on given parameters and read intermediate tensors (for absorbing biases)."""
from __future__ import annotations

import torch
import torch.fx
from torch.utils import _pytree as pytree


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class GraphRunner:
    def __init__(self, gg, model: torch.nn.Module, example_inputs: tuple):
        if gg is None or gg.exported is None:
            raise ValueError("this plan needs its captured graph: compile it, or pass example_inputs to "
                             "GaugePlan.from_json")
        self.gg = gg
        self.ep = gg.exported
        self.model = model
        self.example_inputs = example_inputs

    def _downstream(self, changed: frozenset) -> set[str]:
        """The nodes whose value depends on the parameters ``changed``."""
        cache = self.__dict__.setdefault("_downstream_cache", {})
        if changed not in cache:
            seeds = [n for n in self.gg.graph.nodes
                     if n.op == "placeholder" and self.gg.placeholder_param.get(n.name) in changed]
            seen, stack = set(), list(seeds)
            while stack:
                n = stack.pop()
                if n.name not in seen:
                    seen.add(n.name)
                    stack.extend(n.users)
            cache[changed] = seen
        return cache[changed]

    def values(self, params: dict[str, torch.Tensor], names: set[str], base: dict | None = None,
               changed: set[str] = frozenset(), keep_all: bool = False) -> dict[str, torch.Tensor]:
        """Values of the nodes ``names`` (float64) with the model's parameters replaced by ``params``; differentiable
        in ``params`` when they require grad (the tangent operator's adjoint), no graph is kept otherwise.

        ``keep_all``: return every node computed on the way (a ``base`` for later calls). ``base`` and ``changed``:
        ``params`` differ from the base's only in ``changed``, so only the nodes downstream of those are computed."""
        affected = self._downstream(frozenset(changed)) if base is not None else None
        ep = self.ep
        buffers = dict(self.model.named_buffers())
        flat_inputs = pytree.tree_leaves(self.example_inputs)
        args = []
        ui = 0
        for spec in ep.graph_signature.input_specs:
            kind = spec.kind.name
            if kind == "PARAMETER":
                pname = self.gg.placeholder_param[spec.arg.name]
                args.append(params[pname])
            elif kind == "BUFFER":
                args.append(buffers[spec.target])
            elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
                args.append(ep.constants[spec.target])
            elif kind == "USER_INPUT":
                val = flat_inputs[ui] if ui < len(flat_inputs) else None
                ui += 1
                args.append(val)
            else:
                raise ValueError(f"unsupported graph input kind {kind}")
        captured: dict[str, torch.Tensor] = {}
        read: set[str] = set()

        class _Interp(torch.fx.Interpreter):
            """Runs the float32-traced graph in float64: metadata asserts are skipped, float casts go to float64."""

            def call_function(self, target, args, kwargs):
                name = getattr(getattr(target, "_schema", None), "name", "")
                if name == "aten::_assert_tensor_metadata":
                    return None
                if isinstance(kwargs.get("dtype"), torch.dtype) and kwargs["dtype"] in _FLOATS:
                    kwargs = {**kwargs, "dtype": torch.float64}
                args = tuple(torch.float64 if isinstance(a, torch.dtype) and a in _FLOATS else a for a in args)
                if target is torch.ops.aten.view.default:
                    # the same values wherever view is valid; export drops a .contiguous() that was a no-op on the
                    # layout its fake kernels reported, and this float64 re-run's SDPA returns another layout
                    # (data2vec-vision's attention output)
                    target = torch.ops.aten.reshape.default
                return super().call_function(target, args, kwargs)

            def run_node(self, n):
                if affected is not None and n.op != "placeholder" and n.name not in affected and n.name in base:
                    out = base[n.name]
                else:
                    out = super().run_node(n)
                if keep_all:
                    captured[n.name] = out
                if n.name in names:
                    captured[n.name] = out
                    read.add(n.name)
                    if len(read) == len(names):
                        raise _AllRead      # the rest of the graph cannot change what was read
                return out

        args = [a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        try:
            _Interp(self.gg.graph_module).run(*args)
        except _AllRead:
            pass
        return captured


class _AllRead(Exception):
    """Every requested node has been read: the interpreter stops there."""
