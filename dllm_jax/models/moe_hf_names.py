"""Hugging Face name-map pieces shared by the `llada_moe` and `llada2` families:
norms, dense SwiGLU, routers, the three expert layouts stacked into our
`gate_up` [E, D, 2, I] / `down` [E, I, D] (base.HFTensor entries), a layer's
whole feed-forward part and the final norm and head."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from dllm_jax.models.base import HFTensor


def norms(p: str, i: int) -> Iterator[tuple]:
  yield f'{p}input_layernorm.weight', ('layers', i, 'attn_norm', 'weight'), False
  yield f'{p}post_attention_layernorm.weight', ('layers', i, 'ffn_norm', 'weight'), False


def swiglu(p: str, ours: tuple) -> Iterator[tuple]:
  for name in ('gate', 'up', 'down'):
    yield f'{p}{name}_proj.weight', ours + (name, 'kernel'), True


def router(name: str, ours: tuple) -> Iterator[HFTensor]:
  yield HFTensor((name,), ours + ('router', 'kernel'), lambda a: a[0].T,
                 lambda x: [x.T], 'float32')


def bias(name: str, ours: tuple) -> Iterator[HFTensor]:
  yield HFTensor((name,), ours + ('expert_bias',), lambda a: a[0], lambda x: [x],
                 'float32')


def _t(a: np.ndarray) -> np.ndarray:
  return np.swapaxes(a, -1, -2)


def experts(cfg, p: str, ours: tuple, w13: tuple[str, str]) -> Iterator[HFTensor]:
  """The routed experts in `cfg.hf_layout`: 'experts' (one [out, in] matrix per
  expert), 'fused' ({gate,up,down}_proj [E, out, in], no .weight) or 'w13'
  (w13 [E, 2I, D]: gate rows then up rows; w2 [E, D, I])."""
  e = cfg.n_experts
  gate_up, down = ours + ('gate_up',), ours + ('down',)
  if cfg.hf_layout == 'experts':
    names = lambda proj: [f'{p}experts.{j}.{proj}_proj.weight' for j in range(e)]
    yield HFTensor(
        names('gate') + names('up'), gate_up,
        lambda a: np.stack([_t(np.stack(a[:e])), _t(np.stack(a[e:]))], axis=2),
        lambda x: [x[j, :, 0].T for j in range(e)] + [x[j, :, 1].T for j in range(e)])
    yield HFTensor(names('down'), down, lambda a: _t(np.stack(a)),
                   lambda x: [x[j].T for j in range(e)])
  elif cfg.hf_layout == 'fused':
    yield HFTensor((f'{p}experts.gate_proj', f'{p}experts.up_proj'), gate_up,
                   lambda a: np.stack([_t(a[0]), _t(a[1])], axis=2),
                   lambda x: [_t(x[:, :, 0]), _t(x[:, :, 1])])
    yield HFTensor((f'{p}experts.down_proj',), down, lambda a: _t(a[0]),
                   lambda x: [_t(x)])
  else:
    yield HFTensor(
        (w13[0],), gate_up,
        lambda a: a[0].reshape(e, 2, -1, a[0].shape[-1]).transpose(0, 3, 1, 2),
        lambda x: [x.transpose(0, 2, 3, 1).reshape(e, -1, x.shape[1])])
    yield HFTensor((w13[1],), down, lambda a: _t(a[0]), lambda x: [_t(x)])


def feed_forward(cfg, p: str, i: int, *, bias_name: str, w13: tuple[str, str],
                 shared: str) -> Iterator[Any]:
  """Layer i's feed-forward names under prefix `p` ('model.layers.{i}.'): a dense
  SwiGLU in a dense layer (`cfg.is_moe`), else the router, its optional expert bias
  (`p + bias_name`), the experts (`w13`: the family's fused pair names) and the
  optional shared expert (`p + shared`: under `mlp.` in LLaDA2, beside it at
  the decoder layer in LLaDA-MoE)."""
  if not cfg.is_moe(i):
    yield from swiglu(f'{p}mlp.', ('layers', i, 'mlp'))
    return
  moe = ('layers', i, 'moe')
  yield from router(f'{p}mlp.gate.weight', moe)
  if cfg.expert_bias:
    yield from bias(p + bias_name, moe)
  yield from experts(cfg, p + 'mlp.', moe + ('experts',), w13=w13)
  if cfg.shared_d_ff:
    yield from swiglu(p + shared, moe + ('shared',))


def final() -> Iterator[tuple]:
  yield 'model.norm.weight', ('final_norm', 'weight'), False
  yield 'lm_head.weight', ('head', 'kernel'), True
