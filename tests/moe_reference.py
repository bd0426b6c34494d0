"""An independent PyTorch LLaDA2 / LLaDA-MoE forward, written from the
architecture description (FAMILIES.md A1/A2), and random Hugging Face
checkpoints in each expert layout (tests/test_moe.py uses them)."""

from __future__ import annotations

import json
import math
import os

import torch

F = torch.nn.functional

# The byte tokenizer's ids, as config.json names them (no tokenizer files).
BYTE_IDS = dict(mask_token_id=260, bos_token_id=257, eos_token_id=258, pad_token_id=256,
                eot_token_id=259)

LLADA2_CONFIG = dict(
    model_type='llada2_moe', vocab_size=264, hidden_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
    moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
    num_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
    routed_scaling_factor=2.5, norm_topk_prob=True, rope_theta=600000.0,
    partial_rotary_factor=0.5, rms_norm_eps=1e-6, max_position_embeddings=64,
    **BYTE_IDS)
# model_type 'llada' as the released LLaDA-MoE ships it; embedding rows padded.
LLADA_MOE_CONFIG = dict(
    model_type='llada', vocab_size=264, embedding_size=272, hidden_size=32,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=16, num_experts=8, num_experts_per_tok=2, rope_theta=50000.0,
    rms_norm_eps=1e-5, max_position_embeddings=64, **BYTE_IDS)

# LLaDA-MoE's optional paths, with the reference config's own key names
# (configuration_lladamoe.py): a dense middle layer (`moe_layer_freq`), a shared
# expert at the decoder layer, a router bias kept in the weights.
LLADA_MOE_OPTIONS = dict(
    model_type='lladamoe', vocab_size=264, hidden_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, dense_intermediate_size=24,
    expert_intermediate_size=16, shared_expert_intermediate_size=12, num_experts=8,
    num_experts_per_tok=2, moe_layer_freq=[1, 0, 1],
    moe_router_enable_expert_bias=True, moe_router_score_function='softmax',
    qk_layernorm=True, partial_rotary_factor=1.0, rope_theta=50000.0,
    rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False,
    **BYTE_IDS)


def _is2(hc):
  return 'llada2' in hc['model_type']


def random_state_dict(hc: dict, seed: int = 0) -> dict:
  """Per-expert keys (the reference layout), float32."""
  g = torch.Generator().manual_seed(seed)
  rand = lambda *s: 0.2 * torch.randn(*s, generator=g)
  d, e = hc['hidden_size'], hc['num_experts']
  hq, hkv = hc['num_attention_heads'], hc['num_key_value_heads']
  dh = hc.get('head_dim') or d // hq
  rows = max(hc['vocab_size'], hc.get('embedding_size', 0))
  f_e = (hc.get('moe_intermediate_size') or hc.get('expert_intermediate_size') or
         hc['intermediate_size'])
  freq = hc.get('moe_layer_freq') or [1] * hc['num_hidden_layers']
  is2 = _is2(hc)
  sd = {('model.word_embeddings.weight' if is2 else 'model.embed_tokens.weight'):
        rand(rows, d), 'model.norm.weight': 1 + rand(d), 'lm_head.weight': rand(rows, d)}
  for i in range(hc['num_hidden_layers']):
    p = f'model.layers.{i}.'
    sd[p + 'input_layernorm.weight'] = 1 + rand(d)
    sd[p + 'post_attention_layernorm.weight'] = 1 + rand(d)
    if is2:
      sd[p + 'attention.query_key_value.weight'] = rand((hq + 2 * hkv) * dh, d)
      sd[p + 'attention.dense.weight'] = rand(d, hq * dh)
      sd[p + 'attention.query_layernorm.weight'] = 1 + rand(dh)
      sd[p + 'attention.key_layernorm.weight'] = 1 + rand(dh)
    else:
      for n, rows_ in (('q', hq), ('k', hkv), ('v', hkv)):
        sd[f'{p}self_attn.{n}_proj.weight'] = rand(rows_ * dh, d)
      sd[p + 'self_attn.o_proj.weight'] = rand(d, hq * dh)
      sd[p + 'self_attn.q_norm.weight'] = 1 + rand(dh)
      sd[p + 'self_attn.k_norm.weight'] = 1 + rand(dh)
    if (is2 and i < hc['first_k_dense_replace']) or not freq[i]:
      f = hc['intermediate_size'] if is2 else hc['dense_intermediate_size']
      for n, shape in (('gate', (f, d)), ('up', (f, d)), ('down', (d, f))):
        sd[f'{p}mlp.{n}_proj.weight'] = rand(*shape)
      continue
    sd[p + 'mlp.gate.weight'] = rand(e, d)
    if not is2 and hc.get('moe_router_enable_expert_bias'):
      sd[p + 'mlp.expert_bias'] = 0.1 * torch.randn(e, generator=g)
    if not is2 and hc.get('shared_expert_intermediate_size'):
      f_s = hc['shared_expert_intermediate_size']
      for n, shape in (('gate', (f_s, d)), ('up', (f_s, d)), ('down', (d, f_s))):
        sd[f'{p}shared_expert.{n}_proj.weight'] = rand(*shape)
    if is2:
      sd[p + 'mlp.gate.expert_bias'] = 0.3 * torch.randn(e, generator=g)
      for n, shape in (('gate', (f_e, d)), ('up', (f_e, d)), ('down', (d, f_e))):
        sd[f'{p}mlp.shared_experts.{n}_proj.weight'] = rand(*shape)
    for j in range(e):
      for n, shape in (('gate', (f_e, d)), ('up', (f_e, d)), ('down', (d, f_e))):
        sd[f'{p}mlp.experts.{j}.{n}_proj.weight'] = rand(*shape)
  return sd


def to_layout(sd: dict, hc: dict, layout: str) -> dict:
  """The same weights with the experts in another layout ('fused': veomni
  `experts.{gate,up,down}_proj` [E, out, in]; 'w13': gate rows then up rows)."""
  if layout == 'experts':
    return dict(sd)
  out = {k: v for k, v in sd.items() if '.experts.' not in k}
  e = hc['num_experts']
  for i in range(hc['num_hidden_layers']):
    p = f'model.layers.{i}.mlp.'
    if p + 'experts.0.gate_proj.weight' not in sd:
      continue
    stack = lambda n: torch.stack([sd[f'{p}experts.{j}.{n}_proj.weight'] for j in range(e)])
    if layout == 'fused':
      for n in ('gate', 'up', 'down'):
        out[f'{p}experts.{n}_proj'] = stack(n)
    else:
      w13, w2 = ((p + 'experts.w13_weight', p + 'experts.w2_weight') if _is2(hc)
                 else (p + 'w1', p + 'w2'))
      out[w13] = torch.cat([stack('gate'), stack('up')], dim=1)
      out[w2] = stack('down')
  return out


def write_checkpoint(sd: dict, hc: dict, path: str) -> None:
  """config.json + two safetensors shards + the index, as HF writes them."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  names = sorted(sd)
  weight_map = {}
  for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
    fname = f'model-{i + 1:05d}-of-00002.safetensors'
    save_file({k: sd[k].contiguous() for k in part}, os.path.join(path, fname))
    weight_map.update({k: fname for k in part})
  with open(os.path.join(path, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(hc, f)


def _rms(x, w, eps):
  x32 = x.float()
  return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, theta, rd):
  """NeoX rotate-half on the first rd dims of each head; x [B, H, L, Dh]."""
  l = x.shape[2]
  inv = 1.0 / (theta ** (torch.arange(0, rd, 2).float() / rd))
  freqs = torch.outer(torch.arange(l).float(), inv)
  emb = torch.cat([freqs, freqs], -1)
  r, rest = x[..., :rd], x[..., rd:]
  half = rd // 2
  rot = torch.cat([-r[..., half:], r[..., :half]], -1)
  return torch.cat([r * emb.cos() + rot * emb.sin(), rest], -1)


def _route(hc, sd, p, h):
  logits = h.float() @ sd[p + 'mlp.gate.weight'].float().T
  k, e = hc['num_experts_per_tok'], hc['num_experts']
  if not _is2(hc):  # LLaDAMoESparseMoeBlock.forward: softmax (+ expert_bias), top-k,
    probs = torch.softmax(logits, -1)  # no renormalisation, no scaling.
    if p + 'mlp.expert_bias' in sd:
      probs = probs + sd[p + 'mlp.expert_bias']
    w, idx = torch.topk(probs, k, -1)
    return idx, w
  s = torch.sigmoid(logits)
  b = s + sd[p + 'mlp.gate.expert_bias']
  n, g = b.shape[0], hc['n_group']
  group = b.view(n, g, e // g).topk(2, -1).values.sum(-1)
  keep = torch.zeros(n, g).scatter_(1, group.topk(hc['topk_group'], -1).indices, 1.0)
  masked = b.masked_fill(keep.repeat_interleave(e // g, 1) == 0, float('-inf'))
  idx = masked.topk(k, -1).indices
  w = s.gather(1, idx)
  w = w / (w.sum(-1, keepdim=True) + 1e-20) * hc['routed_scaling_factor']
  return idx, w


def _swiglu(sd, p, x):
  return (F.silu(x @ sd[p + 'gate_proj.weight'].T) * (x @ sd[p + 'up_proj.weight'].T)
          ) @ sd[p + 'down_proj.weight'].T


def torch_logits(sd: dict, hc: dict, tokens) -> torch.Tensor:
  """Logits [B, L, rows] of a per-expert state dict (bidirectional attention)."""
  is2 = _is2(hc)
  eps = hc['rms_norm_eps']
  x = sd['model.word_embeddings.weight' if is2 else 'model.embed_tokens.weight'][tokens]
  b, l, d = x.shape
  hq, hkv = hc['num_attention_heads'], hc['num_key_value_heads']
  dh = hc.get('head_dim') or d // hq
  rd = int(dh * hc.get('partial_rotary_factor', 1.0))
  for i in range(hc['num_hidden_layers']):
    p = f'model.layers.{i}.'
    h = _rms(x, sd[p + 'input_layernorm.weight'], eps)
    if is2:
      qkv = (h @ sd[p + 'attention.query_key_value.weight'].T).view(b, l, hq + 2 * hkv, dh)
      q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
      qn, kn = sd[p + 'attention.query_layernorm.weight'], sd[p + 'attention.key_layernorm.weight']
      wo = sd[p + 'attention.dense.weight']
    else:
      q, k, v = [(h @ sd[f'{p}self_attn.{n}_proj.weight'].T).view(b, l, -1, dh)
                 for n in ('q', 'k', 'v')]
      qn, kn = sd[p + 'self_attn.q_norm.weight'], sd[p + 'self_attn.k_norm.weight']
      wo = sd[p + 'self_attn.o_proj.weight']
    q = _rope(_rms(q, qn, eps).transpose(1, 2), hc['rope_theta'], rd)
    k = _rope(_rms(k, kn, eps).transpose(1, 2), hc['rope_theta'], rd)
    v = v.transpose(1, 2)
    k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1)
    x = x + (att @ v).transpose(1, 2).reshape(b, l, hq * dh) @ wo.T
    h = _rms(x, sd[p + 'post_attention_layernorm.weight'], eps)
    if p + 'mlp.gate.weight' not in sd:
      x = x + _swiglu(sd, p + 'mlp.', h)
      continue
    flat = h.reshape(b * l, d)
    idx, w = _route(hc, sd, p, flat)
    out = torch.zeros_like(flat)
    for j in range(hc['num_experts']):
      weight = (w * (idx == j)).sum(-1, keepdim=True)
      out = out + weight * _swiglu(sd, f'{p}mlp.experts.{j}.', flat)
    for shared in ('mlp.shared_experts.', 'shared_expert.'):  # LLaDA2, LLaDA-MoE.
      if p + shared + 'gate_proj.weight' in sd:
        out = out + _swiglu(sd, p + shared, flat)
    x = x + out.view(b, l, d)
  x = _rms(x, sd['model.norm.weight'], eps)
  return x @ sd['lm_head.weight'].T
