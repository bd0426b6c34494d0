"""Shared by the experiments: short texts as padded rows, and a small training loop
on the library's train step (diffusion or the autoregressive twin)."""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from dllm_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.training import train_step as ts  # pylint: disable=g-import-not-at-top,wrong-import-position

TOKENIZER = ByteTokenizer()


def padded_rows(texts: list[str], length: int, tokenizer=TOKENIZER) -> dict[str, np.ndarray]:
  """Each text as one row: BOS text EOS, then padding (segment 0, never masked)."""
  tokens = np.full((len(texts), length), tokenizer.pad_id, np.int32)
  seg = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text, add_bos=True, add_eos=True)
    if len(ids) > length:
      raise ValueError(f'{text!r} is {len(ids)} tokens, longer than a row ({length}).')
    tokens[i, :len(ids)] = ids
    seg[i, :len(ids)] = 1
  return {'tokens': tokens, 'segment_ids': seg}


def packed_rows(texts: list[str], length: int, seed: int = 0,
                tokenizer=TOKENIZER) -> dict[str, np.ndarray]:
  """Texts (BOS text EOS each) packed first-fit into rows of `length`, each its own
  segment with positions from 0; the rest of a row is padding (segment 0)."""
  docs = []
  for text in texts:
    ids = tokenizer.encode(text, add_bos=True, add_eos=True)
    if len(ids) > length:
      raise ValueError(f'{text!r} is {len(ids)} tokens, longer than a row ({length}).')
    docs.append(ids)
  return pack_ids(docs, length, seed, tokenizer.pad_id)


def pack_ids(docs: list, length: int, seed: int = 0,
             pad_id: int = TOKENIZER.pad_id) -> dict[str, np.ndarray]:
  """Token-id documents (each at most `length`) packed first-fit into rows of
  `length`, as `packed_rows` packs texts."""
  order = np.random.default_rng(seed).permutation(len(docs))
  rows = []  # Each: list of id arrays.
  for i in order:
    ids = docs[i]
    for row in rows:
      if sum(map(len, row)) + len(ids) <= length:
        row.append(ids)
        break
    else:
      rows.append([ids])
  tokens = np.full((len(rows), length), pad_id, np.int32)
  seg = np.zeros((len(rows), length), np.int32)
  pos = np.zeros((len(rows), length), np.int32)
  for r, row in enumerate(rows):
    at = 0
    for s, ids in enumerate(row, 1):
      tokens[r, at:at + len(ids)], seg[r, at:at + len(ids)] = ids, s
      pos[r, at:at + len(ids)] = np.arange(len(ids))
      at += len(ids)
  return {'tokens': tokens, 'segment_ids': seg, 'positions': pos}


def model_config(causal: bool, tokenizer=TOKENIZER, **shape) -> models.ModelConfig:
  """The `tiny` preset; with another tokenizer, its ids and vocabulary (rounded
  up to a multiple of 128), as the trainer does."""
  return models.get_preset('tiny', causal=causal,
                           **{**models.tokenizer_overrides('tiny', tokenizer), **shape})


def train(rows: dict[str, np.ndarray], cfg: models.ModelConfig, *, steps: int,
          batch_size: int = 64, lr: float = 3e-3, seed: int = 0, log=print,
          objective: str | None = None, block_options=None):
  """Trains on random batches of `rows`; the objective follows `cfg.causal`
  unless given ('block_diffusion' takes `block_options`)."""
  opt, sched = optimizer_lib.make_optimizer(
      lr=lr, total_steps=steps, warmup_steps=min(100, steps // 10),
      decay_fraction=0.3, final_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1,
      clip_norm=1.0)
  state = jax.jit(lambda k: ts.init_train_state(cfg, opt, k))(jax.random.key(seed))
  objective = objective or ('next_token' if cfg.causal else 'pretrain')
  step = ts.make_train_step(cfg, opt, sched, objective=objective,
                            random_length_prob=0.0, stratified_t=True,
                            block_options=block_options)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed + 1)
  t0 = time.time()
  for i in range(steps):
    idx = rng.integers(0, len(rows['tokens']), batch_size)
    state, metrics = step(state, {k: v[idx] for k, v in rows.items()}, key)
    if (i + 1) % max(steps // 5, 1) == 0:
      log(f'  {objective} step {i + 1}/{steps}  loss '
          f'{float(metrics["loss"]):.3f}  {time.time() - t0:.0f} s')
  return state.params
