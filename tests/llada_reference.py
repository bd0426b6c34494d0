"""Plain NumPy transcriptions of the published LLaDA algorithms (test references).

`reference_generate` follows the LLaDA reference `generate` line by line: Python
loops over blocks and steps, per-row `get_num_transfer_tokens`, CFG by stacking the
unconditional canvas, Gumbel noise as `exp(l) / (-log u) ** T` in float64, softmax
confidence, -inf after the current block, top-k per row. Top-k ties go to the
lower position (torch.topk leaves them unspecified). Randomness is injected
(`uniforms(step)`), so the JAX sampler's draws can be replayed.

Where the reference's `confidence_eos_eot_inf` line does not do what its name
says (it sets the noisy EOS logit and the clean end-of-turn logit to -inf after
the argmax), this transcription implements the named intent: an EOS or
end-of-turn candidate gets confidence -inf and is committed last in its block.
"""

from __future__ import annotations

import numpy as np


def get_num_transfer_tokens(mask_index: np.ndarray, steps: int) -> np.ndarray:
  mask_num = mask_index.sum(axis=1, keepdims=True)
  base = mask_num // steps
  remainder = mask_num % steps
  out = np.zeros((mask_num.shape[0], steps), np.int64) + base
  for i in range(mask_num.shape[0]):
    out[i, :remainder[i, 0]] += 1
  return out


def _softmax(x: np.ndarray) -> np.ndarray:
  x = x - np.max(x, axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def _topk_indices(row: np.ndarray, k: int) -> np.ndarray:
  order = sorted(range(len(row)), key=lambda j: (-row[j], j))
  return np.asarray(order[:k], np.int64)


def reference_generate(logits_fn, prompt, *, steps, gen_length, block_length,
                       temperature=0.0, cfg_scale=0.0, remasking='low_confidence',
                       mask_id, eos_id, eot_id, logits_eos_inf=False,
                       confidence_eos_eot_inf=False, uniforms=None, canvas=None,
                       start=None):
  """Returns (x [B, T], commit_step [B, T]).

  `logits_fn(x [B, T]) -> float64 [B, T, V]`; `uniforms(step, lo, hi) ->
  (u_gumbel [B, T, V], u_random [B, T])` replays the JAX sampler's random draws
  (it draws them for the current block [lo, hi) only). `canvas`/`start` allow infilling.
  """
  if canvas is None:
    x = np.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, np.int64)
    x[:, :prompt.shape[1]] = prompt
    start = prompt.shape[1]
  else:
    x = np.array(canvas, np.int64)
  commit_step = np.full(x.shape, -1, np.int64)
  prompt_index = x != mask_id
  assert gen_length % block_length == 0
  num_blocks = gen_length // block_length
  assert steps % num_blocks == 0
  steps = steps // num_blocks
  for num_block in range(num_blocks):
    lo = start + num_block * block_length
    hi = start + (num_block + 1) * block_length
    block_mask_index = x[:, lo:hi] == mask_id
    num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
    for i in range(steps):
      global_step = num_block * steps + i
      mask_index = x == mask_id
      if cfg_scale > 0.0:
        un_x = x.copy()
        un_x[prompt_index] = mask_id
        both = logits_fn(np.concatenate([x, un_x], axis=0))
        logits, un_logits = np.split(both, 2, axis=0)
        logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
      else:
        logits = logits_fn(x)
      logits = np.array(logits, np.float64)
      if logits_eos_inf:
        logits[:, :, eos_id] = -np.inf
      u_gumbel, u_random = (uniforms(global_step, lo, hi) if uniforms
                            else (None, None))
      if temperature == 0:
        logits_with_noise = logits
      else:
        gumbel_noise = (-np.log(np.asarray(u_gumbel, np.float64))) ** temperature
        logits_with_noise = np.exp(logits) / gumbel_noise
      x0 = np.argmax(logits_with_noise, axis=-1)
      if remasking == 'low_confidence':
        p = _softmax(logits)
        x0_p = np.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
      elif remasking == 'random':
        x0_p = np.array(u_random, np.float64)
      else:
        raise NotImplementedError(remasking)
      if confidence_eos_eot_inf:
        x0_p = np.where((x0 == eos_id) | (x0 == eot_id), -np.inf, x0_p)
      x0_p[:, hi:] = -np.inf
      x0 = np.where(mask_index, x0, x)
      confidence = np.where(mask_index, x0_p, -np.inf)
      transfer_index = np.zeros_like(x0, dtype=bool)
      for j in range(confidence.shape[0]):
        # -inf confidences of eligible positions still beat ineligible ones.
        eligible = mask_index[j] & (np.arange(x.shape[1]) < hi)
        row = np.where(eligible, confidence[j], -np.inf)
        row = np.where(eligible & np.isneginf(row), -1e300, row)
        transfer_index[j, _topk_indices(row, int(num_transfer_tokens[j, i]))] = True
      x[transfer_index] = x0[transfer_index]
      commit_step[transfer_index] = global_step
  return x, commit_step
