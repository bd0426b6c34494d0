"""Text in, text out: prompts encoded, sampled and decoded (launch.sample and the
sample printed after training)."""

from __future__ import annotations

import jax
import numpy as np

from dllm_jax.data import sft as sft_lib
from dllm_jax.sampling import generate as gen


def sample_text(params, model_cfg, tokenizer, prompt: str,
                sampling: gen.SamplingConfig, key: jax.Array, num_samples: int = 1,
                chat: bool = False) -> list[str]:
  """Prompt text -> `num_samples` completions. The prompt is encoded after a BOS
  token, or as a user turn of the SFT chat format when `chat`."""
  return sample_text_counts(params, model_cfg, tokenizer, prompt, sampling, key,
                            num_samples, chat)[0]


def sample_text_counts(params, model_cfg, tokenizer, prompt: str,
                       sampling: gen.SamplingConfig, key: jax.Array,
                       num_samples: int = 1,
                       chat: bool = False) -> tuple[list[str], list[int], int]:
  """Like `sample_text`, with the forward counts: (completions, the forwards
  that decided each one's tokens [num_samples], every forward the batch ran:
  the block sampler's cache prefill and block writes included)."""
  ids = (sft_lib.prompt_ids(tokenizer, [{'role': 'user', 'content': prompt}])
         if chat else tokenizer.encode(prompt, add_bos=True))
  if not isinstance(sampling, gen.SamplingConfig):  # A block-diffusion run.
    from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
    out = block.generate(params, np.tile(ids, (num_samples, 1)), key,
                         config=model_cfg, sampling=sampling)
    return ([tokenizer.decode(row[:n]) for row, n in
             zip(np.asarray(out.tokens), np.asarray(out.lengths))],
            np.asarray(out.decisions).tolist(), int(out.forwards))
  state = gen.sample(params, np.tile(ids, (num_samples, 1)), key, config=model_cfg,
                     sampling=sampling)
  tokens = state.tokens
  if jax.process_count() > 1:  # A global array: every host gets all rows.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    tokens, decisions = multihost_utils.process_allgather(
        (tokens, state.decisions), tiled=True)
  else:
    decisions = state.decisions
  return ([tokenizer.decode(row[len(ids):]) for row in np.asarray(tokens)],
          np.asarray(decisions).tolist(), int(state.nfe))
