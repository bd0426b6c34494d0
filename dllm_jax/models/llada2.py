"""The `llada2` family: LLaDA2.0 / 2.1 mask predictors (mini 16B with 1.4B
active, flash 100B).

A dense first layer, then mixtures of experts: sigmoid router (float32) with a
per-expert bias that only selects (aux-loss-free balancing), group-limited
top-k (groups scored by their two best biased scores), weights renormalised and
scaled by `routed_scaling`, one shared expert fed the same normed input;
fused QKV projection with grouped-query attention, per-head QK RMSNorm before a
RoPE that rotates the first half of each head. The network is
`models/moe_transformer.py`'s; this module holds the config class, presets and
the Hugging Face names (`model.layers.N.attention.query_key_value.weight`, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator

from dllm_jax.models import moe_hf_names as names
from dllm_jax.models import moe_transformer as mt
from dllm_jax.models.llada_config import BYTE_VOCAB
from dllm_jax.models.llada_moe import RELEASED_IDS


@dataclasses.dataclass(frozen=True)
class LLaDA2Config(mt.MoEConfig):
  family: ClassVar[str] = 'llada2'


_LLADA2 = dict(
    vocab_size=157_184, head_dim=128, n_experts=256, top_k=8, first_k_dense=1,
    router='sigmoid', expert_bias=True, n_group=8, topk_group=4,
    norm_topk_prob=True, routed_scaling=2.5, fused_qkv=True, rope_theta=600_000.0,
    rotary_fraction=0.5, norm_eps=1e-6, max_len=16_384, bias_update_rate=1e-3,
    ids=RELEASED_IDS)

PRESETS: dict[str, dict[str, Any]] = {
    'llada2_mini': dict(d_model=2048, n_layers=20, n_heads=16, n_kv_heads=4,
                        d_ff=5120, moe_d_ff=512, shared_d_ff=512, **_LLADA2),
    'llada2_flash': dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=4,
                         d_ff=9216, moe_d_ff=1024, shared_d_ff=1024, **_LLADA2),
    # The same structure at CPU size (byte vocabulary): 1 dense + 2 MoE layers,
    # 8 experts in 4 groups, top-2 from the best 2 groups.
    'llada2_tiny': dict(
        vocab_size=BYTE_VOCAB, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2,
        head_dim=16, d_ff=128, n_experts=8, top_k=2, moe_d_ff=32, shared_d_ff=32,
        first_k_dense=1, router='sigmoid', expert_bias=True, n_group=4,
        topk_group=2, norm_topk_prob=True, routed_scaling=2.5, fused_qkv=True,
        rope_theta=600_000.0, rotary_fraction=0.5, norm_eps=1e-6, max_len=512,
        bias_update_rate=1e-3),
}


def hf_name_map(cfg: mt.MoEConfig) -> Iterator[Any]:
  """Hugging Face names of every parameter (LLaDA2 layout): `model.
  word_embeddings.weight`; `model.layers.N.attention.query_key_value.weight`
  [(Hq + 2 Hkv) Dh, D] (Q, K, V blocks), `attention.dense.weight`,
  `attention.{query,key}_layernorm.weight`; `input_layernorm`,
  `post_attention_layernorm`; dense layers `mlp.{gate,up,down}_proj.weight`;
  MoE layers `mlp.gate.weight` [E, D], `mlp.gate.expert_bias` [E] (float32),
  experts per `cfg.hf_layout` ('experts': `mlp.experts.{e}.{gate,up,down}_proj.
  weight`; 'fused': `mlp.experts.{gate,up,down}_proj` [E, out, in]; 'w13':
  `mlp.experts.w13_weight` [E, 2I, D], `w2_weight` [E, D, I]),
  `mlp.shared_experts.*`; `model.norm.weight`; `lm_head.weight`."""
  yield 'model.word_embeddings.weight', ('embed', 'embedding'), False
  for i in range(cfg.n_layers):
    p = f'model.layers.{i}.'
    attn = ('layers', i, 'attn')
    yield f'{p}attention.query_key_value.weight', attn + ('qkv', 'kernel'), True
    yield f'{p}attention.dense.weight', attn + ('o', 'kernel'), True
    yield f'{p}attention.query_layernorm.weight', attn + ('q_norm', 'weight'), False
    yield f'{p}attention.key_layernorm.weight', attn + ('k_norm', 'weight'), False
    yield from names.norms(p, i)
    yield from names.feed_forward(
        cfg, p, i, bias_name='mlp.gate.expert_bias', shared='mlp.shared_experts.',
        w13=(f'{p}mlp.experts.w13_weight', f'{p}mlp.experts.w2_weight'))
  yield from names.final()


FAMILY = mt.family('llada2', LLaDA2Config, PRESETS, hf_name_map)
