"""NumPy transcriptions of the block-diffusion references the block sampler and
objective are tested against (batch 1, temperature 0, as released):

  * LLaDA2 `generate` (the Hugging Face remote code of LLaDA2.0, vendored by
    ZHZisZZ/dllm `pipelines/llada2/models/modeling_llada2_moe.py`);
  * LLaDA2.1 `generate` with token editing (`pipelines/llada21/...`);
  * dInfer's `get_transfer_index_threshold` (`decoding/parallel_strategy.py`);
  * the LLaDA2 / BD3-LM loss over [x_t, x_0].

`logits_fn(x [1, T]) -> logits [1, T, V]` is a block-causal forward of the whole
canvas: the references forward x[:, :(k+1)B] instead, whose rows are the same
under a block-causal mask (later blocks are never attended).
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def num_transfer_tokens(block_length: int, steps: int) -> np.ndarray:
  base, remainder = divmod(block_length, steps)
  n = np.full(steps, base, np.int64)
  n[:remainder] += 1
  return n


def _topk_index(confidence: np.ndarray, k: int) -> np.ndarray:
  # torch.topk order for distinct values; ties (absent with float logits) aside.
  return np.argsort(-confidence, kind='stable')[:k]


def _sample_greedy(logits):
  probs = softmax(logits)
  x0 = probs.argmax(-1)
  return x0, np.take_along_axis(probs, x0[..., None], -1)[..., 0]


def _canvas(prompt, gen_length, block_length, mask_id):
  p = len(prompt)
  num_blocks = (p + gen_length + block_length - 1) // block_length
  x = np.full((1, num_blocks * block_length), mask_id, np.int64)
  x[0, :p] = prompt
  return x, num_blocks


def _cut(x, p, gen_length, eos_id):
  answer = x[0, p:p + gen_length]
  eos = np.nonzero(answer == eos_id)[0]
  first = eos[0] if len(eos) else gen_length
  return answer[:first + 1]


def llada2_generate(logits_fn, prompt, *, gen_length, block_length, steps,
                    threshold, eos_id, mask_id, minimal_topk=1, eos_early_stop=False,
                    schedules=None):
  """LLaDA2.0 `generate` (temperature 0), line for line: the answer (cut after
  its first EOS; with `eos_early_stop`, what its early return returns, which
  runs past gen_length when that EOS lies in the last block's tail) and the
  number of forwards. `schedules`, a list, collects each step's quota n_s."""
  steps = min(steps, gen_length // minimal_topk)
  p = len(prompt)
  x, num_blocks = _canvas(prompt, gen_length, block_length, mask_id)
  schedule = num_transfer_tokens(block_length, steps)
  nfe = 0
  for num_block in range(p // block_length, num_blocks):
    end = (num_block + 1) * block_length
    for step in range(steps):
      active = x[0, end - block_length:end] == mask_id
      if active.sum() == 0:
        break
      logits = logits_fn(x)[0, end - block_length:end]
      nfe += 1
      x0, x0_p = _sample_greedy(logits)
      n = int(schedule[step])
      if schedules is not None:
        schedules.append(n)
      confidence = np.where(active, x0_p, -np.inf)
      high = confidence > threshold
      transfer = np.zeros(block_length, bool)
      if high.sum() >= n:
        transfer = high
      else:
        transfer[_topk_index(confidence, min(n, int(active.sum())))] = True
      x[0, end - block_length:end][transfer] = x0[transfer]
      if eos_early_stop and (x0[transfer] == eos_id).any():
        # The reference looks for the first EOS in cur_x, prompt included: a
        # prompt holding EOS makes it return an empty answer (the project
        # searches the answer only; the tests' prompts hold no EOS).
        eos_pos = np.nonzero(x[0, :end] == eos_id)[0]
        if len(eos_pos) > 0:
          eos_pos = eos_pos[0]
          if (x[0, p:eos_pos] != mask_id).all():
            return x[0, p:eos_pos + 1].copy(), nfe
    if (x[0, p:end] == eos_id).any():
      break
  return _cut(x, p, gen_length, eos_id), nfe


def llada21_generate(logits_fn, prompt, *, gen_length, block_length, threshold,
                     editing_threshold, max_post_steps, eos_id, mask_id,
                     num_to_transfer=1, eos_early_stop=True):
  """LLaDA2.1 `generate` with token editing (temperature 0): (answer cut after
  its first EOS, forwards, edits made). Its `steps = min(steps, gen_length //
  minimal_topk)` is computed and never read (each step commits at least
  `num_to_transfer`), so neither is a parameter here."""
  p = len(prompt)
  x, num_blocks = _canvas(prompt, gen_length, block_length, mask_id)
  nfe = edits = 0
  for num_block in range(p // block_length, num_blocks):
    start, end = num_block * block_length, (num_block + 1) * block_length
    post_steps = 0
    while True:
      old = x[0, start:end].copy()
      active = old == mask_id
      if not active.any():
        post_steps += 1
      if post_steps > max_post_steps:
        break
      prompt_in_block = np.zeros(block_length, bool)
      if start < p:
        prompt_in_block[:min(p - start, block_length)] = True
      logits = logits_fn(x)[0, start:end]
      nfe += 1
      x0, x0_p = _sample_greedy(logits)
      mask_transfer = np.zeros(block_length, bool)
      if active.sum() > 0:
        confidence = np.where(active, x0_p, -np.inf)
        high = (confidence > threshold) & active
        if high.sum() >= num_to_transfer:
          mask_transfer = high
        else:
          mask_transfer[_topk_index(confidence, min(num_to_transfer,
                                                    int(active.sum())))] = True
      editable = ~active & ~prompt_in_block
      edit = (np.where(editable, x0_p, -np.inf) > editing_threshold) & editable
      edit &= x0 != old
      edits += int(edit.sum())
      final = mask_transfer | edit
      x[0, start:end][final] = x0[final]
      if not active.any() and not edit.any():
        break
    generated = x[0, p:end]
    if eos_early_stop and (generated == mask_id).sum() == 0 and (
        generated == eos_id).any():
      break
  return _cut(x, p, gen_length, eos_id), nfe, edits


def dinfer_threshold(logits, mask_index, x, mask_id, threshold):
  """dInfer's `get_transfer_index_threshold` at temperature 0 (fp32 softmax,
  rm_mask=True): (x0 [B, W], transfer_index [B, W])."""
  x0 = logits.argmax(-1)
  p = softmax(logits.astype(np.float32))
  x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0]
  mask_index = mask_index & (x0 != mask_id)
  x0 = np.where(mask_index, x0, x)
  confidence = np.where(mask_index, x0_p, -np.inf)
  actual = np.clip(confidence.max(1) - 1e-5, -1000, threshold)[:, None]
  return x0, (confidence >= actual) & mask_index


def block_loss(logits_noisy, x0, xt, mask_id, maskable, t=None):
  """LLaDA2's loss (t None): CE at masked x_t positions / #masked; BD3-LM's
  (t [B, L]): CE / t at masked positions / #maskable. logits_noisy [B, L, V]."""
  logp = np.log(softmax(logits_noisy))
  ce = -np.take_along_axis(logp, x0[..., None], -1)[..., 0]
  masked = xt == mask_id
  if t is None:
    return (ce * masked).sum() / max(masked.sum(), 1)
  return (ce * masked / t).sum() / max(maskable.sum(), 1)


def three_part_mask(positions, block_size, segment_ids=None):
  """The [x_t, x_0] mask by its definition, loop by loop: bool [2L, 2L]."""
  l = len(positions)
  m = np.zeros((2 * l, 2 * l), bool)
  for i in range(2 * l):
    for j in range(2 * l):
      bi, bj = positions[i % l] // block_size, positions[j % l] // block_size
      if i < l and j < l:
        m[i, j] = bi == bj
      elif i < l:
        m[i, j] = bi > bj
      elif j >= l:
        m[i, j] = bi >= bj
      if segment_ids is not None and segment_ids[i % l] != segment_ids[j % l]:
        m[i, j] = False
  return m
