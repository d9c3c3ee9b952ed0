"""The gauge families: one table entry per family, saying how the solver recognises it from what the rules saw
and which lemmas every instance must cite (a test checks this on the zoo; docs/catalogue.md has the math).

A multiplicative gauge's family is decided per block (a fused QKV probe holds Q/K blocks and V/O blocks): a block
belongs to the *last* entry of :data:`MULTIPLICATIVE` whose ``block_tags`` all met the block's coordinates and whose
``probe_tags`` the probe carries (so attention wins over a norm gain, which wins over GLU and ReLU). An additive
gauge takes the *first* entry of :data:`ADDITIVE` it matches. Adding a family is one entry here, the rule that tags
what it meets (``ctx.tag``), and its tests.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    recognised: str                    # in words, for --explain and the docs
    block_tags: tuple[str, ...] = ()   # multiplicative: tags every coordinate of the block met
    probe_tags: tuple[str, ...] = ()   # tags the probe (any of the gauge's probes) carries
    seeds: tuple[str, ...] = ()        # additive: the seed kind, one of these (empty: any)
    sinks: tuple[str, ...] = ()        # additive: absorbed by one of these (empty: any)
    lemmas: tuple[str, ...] = ()       # every instance cites at least one of these (empty: no requirement)


MULTIPLICATIVE: list[Family] = [
    Family("linear_linear", "a GL block between a linear writer and its readers, nothing else on the way",
           lemmas=("linear_writer", "embedding_writer")),
    Family("positive_rescale", "the block crossed a ReLU, LeakyReLU or max-pool", block_tags=("relu",),
           lemmas=("relu_pos_homogeneous", "leaky_relu_pos_homogeneous", "maxpool_pos")),
    Family("glu_rescale", "the block crossed the product of a gated linear unit", block_tags=("glu",),
           lemmas=("glu_rescale",)),
    Family("norm_gain", "seeded at a normalisation's gain", probe_tags=("norm_gain",), lemmas=("norm_gain",)),
    Family("attention_vo", "the block reached the values of an attention and left through its output projection",
           block_tags=("attn_vo",), lemmas=("matmul_free_axis",)),
    Family("attention_qk", "the block met its dual at the query-key contraction", block_tags=("attn_qk",),
           lemmas=("bilinear_contract",)),
    Family("attention_qk_rope", "a query-key block inside a rotary embedding: only the commutant survives",
           block_tags=("attn_qk", "rope"), lemmas=("rope_commutant",)),
    Family("norm_input_scale", "a block tied to one positive scale by a normalisation at eps = 0",
           block_tags=("norm_scale",), lemmas=("rmsnorm_scale", "layernorm_scale")),
    Family("batchnorm_input_scale", "a per-channel scale of a batch norm's (eval) input, undone by its gain, its bias "
           "taking the running mean's share", block_tags=("bn_input_scale",), lemmas=("batchnorm_eval_scale",)),
    Family("layernorm_shear", "a layer norm's output moved by D (I + w 1ᵀ) D⁻¹, which fixes its centred part: the "
           "bias takes it, the readers (one without a bias) its inverse", probe_tags=("ln_shear",),
           lemmas=("layernorm_shear",)),
    Family("residual_rotation", "a block that passed an RMS normalisation (O(d)) or a layer norm (O(d - 1), fixing "
           "the ones vector) as a rotation: a residual stream, or any tensor whose readers are such norms and "
           "linears", block_tags=("stream_rotation",), lemmas=("rmsnorm_rotation", "layernorm_rotation")),
    Family("attention_qk_rope_rotation", "a query-key rotary pair normalised after RoPE (Llama-4's QK L2 norm): of the "
           "commutant a I + b J the norm passes the rotation, SO(2)", block_tags=("attn_qk", "rope", "stream_rotation"),
           lemmas=("rope_commutant",)),
]

ADDITIVE: list[Family] = [
    Family("key_bias", "a translation of the keys, absorbed by the softmax over keys",
           probe_tags=("key_translation",), lemmas=("key_bias_shift", "softmax_shift")),
    Family("value_bias", "a translation of the values, absorbed by the output projection's bias",
           probe_tags=("attn_value_translation",), lemmas=("value_bias_rows",)),
    Family("logit_shift", "a row shift of the head, absorbed by the softmax of the loss", seeds=("row_shift",),
           sinks=("cross_entropy", "softmax"), lemmas=("softmax_shift",)),
    Family("norm_input_shift", "a translation of a LayerNorm's input along the all-ones direction",
           sinks=("layer_norm", "centring"), lemmas=("layernorm_shift", "mean_cancel")),
    Family("layernorm_kernel", "a reader's rows moved along the inverse gain of the layer norm it reads (the "
           "centred output annihilates it), its bias compensating", seeds=("centred_reader",),
           lemmas=("layernorm_kernel",)),
    Family("bias_translation", "a bias translation absorbed by the biases downstream", lemmas=()),
]

FAMILIES: dict[str, Family] = {f.name: f for f in MULTIPLICATIVE + ADDITIVE}


def block_families(blocks: np.ndarray, block_tag: dict[str, np.ndarray], probe_tags: set[str]) -> np.ndarray:
    """The family name of each block (``block_tag[t]``: a mask over all blocks, True where a coordinate met t)."""
    def has(t):
        m = block_tag.get(t)
        return m[blocks] if m is not None else np.zeros(len(blocks), dtype=bool)

    fam = np.full(len(blocks), MULTIPLICATIVE[0].name, dtype=object)
    for f in MULTIPLICATIVE[1:]:
        if not set(f.probe_tags) <= probe_tags:
            continue
        mask = np.ones(len(blocks), dtype=bool)
        for t in f.block_tags:
            mask &= has(t)
        fam[mask] = f.name
    return fam


def additive_family(seed: str, tags: set[str], sinks: set[str]) -> str:
    """The first additive family the probe matches (the last entry matches every probe)."""
    for f in ADDITIVE:
        if set(f.probe_tags) <= tags and (not f.seeds or seed in f.seeds) and (not f.sinks or sinks & set(f.sinks)):
            return f.name
    raise AssertionError("the last additive family matches every probe")
