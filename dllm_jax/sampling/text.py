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
  ids = (sft_lib.prompt_ids(tokenizer, [{'role': 'user', 'content': prompt}])
         if chat else tokenizer.encode(prompt, add_bos=True))
  if not isinstance(sampling, gen.SamplingConfig):  # A block-diffusion run.
    from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
    out = block.generate(params, np.tile(ids, (num_samples, 1)), key,
                         config=model_cfg, sampling=sampling)
    return [tokenizer.decode(row[:n]) for row, n in
            zip(np.asarray(out.tokens), np.asarray(out.lengths))]
  tokens = gen.generate(params, np.tile(ids, (num_samples, 1)), key, config=model_cfg,
                        sampling=sampling)
  if jax.process_count() > 1:  # A global array: every host gets all rows.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    tokens = multihost_utils.process_allgather(tokens, tiled=True)
  return [tokenizer.decode(row[len(ids):]) for row in np.asarray(tokens)]
