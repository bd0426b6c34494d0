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

__version__ = '0.1.0'

# pylint: disable=g-import-not-at-top,g-bad-import-order
from dllm_jax import models
from dllm_jax.attention import AttentionSpec
from dllm_jax.data.tokenizer import ByteTokenizer
from dllm_jax.model import abstract_params, forward, init_params
from dllm_jax.presets import ModelConfig, PRESETS, get_preset
from dllm_jax.sampling.generate import SamplingConfig, generate, infill, pad_prompts, sample
from dllm_jax.workdir import restore_for_inference
