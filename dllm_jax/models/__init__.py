"""The models: every family behind one set of calls, their presets and registry.

  config = models.get_preset('tiny')                # any family's preset, by name
  params = models.init_params(config, key)          # nested dict of arrays
  logits = models.forward(params, tokens, config=config, attention=spec)
  family = models.of(config); models.register(FAMILY)
  d = models.config_to_dict(config); config = models.config_from_dict(d)

`calls.py` runs a config's family, `registry.py` keeps the families,
`presets.py` names their shapes; `attention.py` is the attention every family
runs and `layers.py` the layers they share. A family is a module (`llada.py`,
`llada_moe.py`, `llada2.py`) that builds a `base.Family`.
"""

from dllm_jax.models.attention import AttentionSpec
from dllm_jax.models.base import Family, Params
from dllm_jax.models.calls import (abstract_params, attention_impl, default_attention,
                                   forward, forward_window, forward_with_cache,
                                   init_params)
from dllm_jax.models.presets import (BYTE_VOCAB, DTYPES, EMBED_GRADS, PRESETS,
                                     REMAT_POLICIES, ModelConfig, tokenizer_overrides)
from dllm_jax.models.registry import (config_from_dict, config_to_dict, get, get_preset,
                                      names, of, preset_family, preset_names, register)
