"""Mixture-of-experts blocks captured without data-dependent control flow.

Hugging Face experts modules (``@use_experts_implementation``: Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, GPT-OSS,
GraniteMoE, PhiMoE, ...) loop in eager mode over the experts that were hit (``nonzero()``, then a Python ``for``),
which ``torch.export`` cannot trace. For capture they run a *dense masked* implementation, registered with the
library's own experts interface: every expert on every token, weighted by the routing weights scattered into a
[tokens, experts] matrix (zero where an expert was not chosen),

    y = Σ_e  w[:, e] · down_e(act(gate_e(x)) ⊙ up_e(x)),    w = scatter(top_k_index, top_k_weights),

which equals the eager loop exactly (the unchosen experts are multiplied by zero) and unrolls into one static graph
with each expert's weights as constant-index views, so the rules see each expert as an ordinary gated MLP. The
routing itself (softmax, top-k) is traced as it is.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

DENSE = "gaugec_dense"


def _linear(x, weight, bias, transposed: bool):
    return F.linear(x, weight.T if transposed else weight, bias)


def dense_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the dense routing matrix (see the module docstring)."""
    n_experts = self.num_experts
    routing = torch.zeros(hidden_states.shape[0], n_experts + 1, dtype=top_k_weights.dtype,
                          device=hidden_states.device)
    routing = routing.scatter_add(1, top_k_index.long(), top_k_weights)[:, :n_experts]   # column E: EP sentinels
    out = None          # no zeros_like(hidden_states): it would tie the output to the input in the graph
    up_w = self.gate_up_proj if self.has_gate else self.up_proj
    up_b = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    for e in range(n_experts):
        h = _linear(hidden_states, up_w[e], None if up_b is None else up_b[e], self.is_transposed)
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        y = _linear(h, self.down_proj[e], self.down_proj_bias[e] if self.has_bias else None, self.is_transposed)
        if self.has_post_expert_norm:
            y = self.post_expert_norm(y)
        y = y * routing[:, e:e + 1].to(y.dtype)
        out = y if out is None else out + y
    return out.to(hidden_states.dtype)


def _register() -> bool:
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:      # transformers is optional
        return False
    if DENSE not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(DENSE, dense_experts_forward)
    return True


def experts_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The Hugging Face experts modules of ``model`` (those dispatching on ``config._experts_implementation``)."""
    return [m for m in model.modules()
            if hasattr(m, "_apply_gate") and hasattr(getattr(m, "config", None), "_experts_implementation")]


@contextlib.contextmanager
def dense_experts(model: torch.nn.Module):
    """Run ``model``'s experts modules with the dense masked implementation inside the block (restored after)."""
    mods = experts_modules(model)
    if not mods or not _register():
        yield
        return
    saved = [(m.config, m.config._experts_implementation) for m in mods]
    try:
        for cfg, _ in saved:
            cfg._experts_implementation = DENSE
        yield
    finally:
        for cfg, impl in saved:
            cfg._experts_implementation = impl
