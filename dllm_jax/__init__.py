"""dllm_jax: masked diffusion language models (the LLaDA family) in JAX."""

__version__ = '0.1.0'
