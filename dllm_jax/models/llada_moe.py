"""The `llada_moe` family: LLaDA-MoE (7B total, 1B active) mask predictor.

Every layer a mixture of experts (or those `moe_layer_freq` marks, the others
dense): softmax router (float32), top-k experts whose weights are the softmax
probabilities, not renormalised nor scaled; an optional per-expert bias
(`moe_router_enable_expert_bias`) added to the probabilities, so it both
chooses and stays in the weights; an optional shared expert beside the routed
ones (none in the released shape); separate q/k/v/o projections with a
per-head RMSNorm of queries and keys before a full-width RoPE. The network is
`models/moe_transformer.py`'s; this module holds the config class, presets and
the Hugging Face names (`model.layers.N.self_attn.q_proj.weight`, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator

from dllm_jax import ids as ids_lib
from dllm_jax.models import moe_hf_names as names
from dllm_jax.models import moe_transformer as mt
from dllm_jax.models.llada_config import BYTE_VOCAB


@dataclasses.dataclass(frozen=True)
class LLaDAMoEConfig(mt.MoEConfig):
  family: ClassVar[str] = 'llada_moe'


# The LLaDA2 / Ling vocabulary's documented ids (mask 156895, EOS = pad 156892,
# BOS 156891); end of turn is taken as EOS here: a tokenizer loaded from the
# checkpoint's own files (interop/moe_hf.py: tokenizer) supplies the real ids.
RELEASED_IDS = ids_lib.SpecialIds(mask=156_895, bos=156_891, eos=156_892,
                                        eot=156_892, pad=156_892)

PRESETS: dict[str, dict[str, Any]] = {
    # LLaDA-MoE-7B-A1B (values from third-party config copies: check a released
    # config.json; interop/moe_hf.py reads it and says where it differs).
    'llada_moe_7b': dict(
        vocab_size=157_184, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16,
        head_dim=128, d_ff=8192, n_experts=64, top_k=8, moe_d_ff=1024,
        router='softmax', rope_theta=50_000.0, norm_eps=1e-5, max_len=8192,
        ids=RELEASED_IDS),
    # The same structure at CPU size (byte vocabulary).
    'llada_moe_tiny': dict(
        vocab_size=BYTE_VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
        head_dim=16, d_ff=128, n_experts=8, top_k=2, moe_d_ff=32, router='softmax',
        max_len=512),
}


def hf_name_map(cfg: mt.MoEConfig) -> Iterator[Any]:
  """Hugging Face names of every parameter (LLaDA-MoE layout): `model.
  embed_tokens.weight`; `model.layers.N.self_attn.{q,k,v,o}_proj.weight`,
  `self_attn.{q,k}_norm.weight`; `input_layernorm`, `post_attention_layernorm`;
  dense layers `mlp.{gate,up,down}_proj.weight`; MoE layers `mlp.gate.weight`
  [E, D], optional `mlp.expert_bias` [E] (float32), experts per
  `cfg.hf_layout`: 'experts' `mlp.experts.{e}.{gate,up,down}_proj.weight`,
  'fused' `mlp.experts.{gate,up,down}_proj` [E, out, in], 'w13' `mlp.w1`
  [E, 2I, D] and `mlp.w2` [E, D, I]; the optional shared expert at the decoder
  layer, `model.layers.N.shared_expert.{gate,up,down}_proj.weight` (not under
  `mlp.`); `model.norm.weight`; `lm_head.weight`."""
  yield 'model.embed_tokens.weight', ('embed', 'embedding'), False
  for i in range(cfg.n_layers):
    p = f'model.layers.{i}.'
    for ours in ('q', 'k', 'v', 'o'):
      yield f'{p}self_attn.{ours}_proj.weight', ('layers', i, 'attn', ours, 'kernel'), True
    for ours in ('q_norm', 'k_norm'):
      yield f'{p}self_attn.{ours}.weight', ('layers', i, 'attn', ours, 'weight'), False
    yield from names.norms(p, i)
    yield from names.feed_forward(cfg, p, i, bias_name='mlp.expert_bias',
                                  shared='shared_expert.',
                                  w13=(f'{p}mlp.w1', f'{p}mlp.w2'))
  yield from names.final()


FAMILY = mt.family('llada_moe', LLaDAMoEConfig, PRESETS, hf_name_map)
