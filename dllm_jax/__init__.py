"""dllm_jax: masked diffusion language models (the LLaDA family) in JAX.

The public API:

  config = get_preset('tiny')                       # ModelConfig
  params = init_params(config, key)                 # nested dict of arrays
  logits = forward(params, tokens, config=config)   # [B, L, V]
  tokens = generate(params, prompt, key, config=config, sampling=SamplingConfig())
  config, params, tokenizer = restore_for_inference(workdir)
  models.get_preset('llada2_mini'); models.register(FAMILY)   # model families
  forward(params, tokens, config=config, attention=AttentionSpec(...))
"""

from dllm_jax import models
from dllm_jax.models import (PRESETS, AttentionSpec, ModelConfig, abstract_params,
                             forward, get_preset, init_params)
from dllm_jax.sampling.generate import SamplingConfig, generate, infill, pad_prompts, sample
from dllm_jax.tokenizers import ByteTokenizer
from dllm_jax.training.workdir import restore_for_inference
from dllm_jax.version import __version__
