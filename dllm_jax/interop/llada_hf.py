"""LLaDA Hugging Face safetensors <-> dllm_jax parameters (the `llada` family).

The Hugging Face layout (LLaDA-8B-Base/Instruct): `model.transformer.wte.weight`
[V, D]; `model.transformer.blocks.N.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,
ff_out}.weight` as [out, in]; `...blocks.N.{attn_norm,ff_norm}.weight` [D];
`model.transformer.ln_f.weight` [D]; `model.transformer.ff_out.weight` [V, D]
(the untied output head). The map lives with the family
(`models/llada.py: hf_name_map`); reading and writing are `interop/hf.py`'s.
"""

from dllm_jax.interop.hf import INDEX_FILE, load_params, save_params
from dllm_jax.models.llada import HF_PREFIX as PREFIX
from dllm_jax.models.llada import hf_name_map as name_map

__all__ = ['INDEX_FILE', 'PREFIX', 'load_params', 'name_map', 'save_params']
