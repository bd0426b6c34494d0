"""Loading a model for serving, apart from running it: a training workdir's
checkpoint or a Hugging Face directory -> `Loaded` (parameters, config,
tokenizer, and the defaults the checkpoint implies), which
`Engine.from_loaded` (the engine runs it) takes.

  loaded = loading.from_workdir('/tmp/dllm')     # or loading.from_hf_dir(DIR)
  engine = Engine.from_loaded(loaded, max_batch=32)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from dllm_jax.sampling import generate as gen
from dllm_jax.serving import block_rows


# The block size LLaDA2 checkpoints are trained with (block diffusion).
LLADA2_BLOCK_SIZE = 32


@dataclasses.dataclass
class Loaded:
  """A loaded model: `defaults` are Engine keyword arguments the checkpoint
  implies (default_sampling, chat, name); `meta` the workdir checkpoint's
  (None for a directory); `trained_block_size` that of a block-diffusion
  checkpoint (None: masked diffusion)."""
  params: Any
  config: Any
  tokenizer: Any
  defaults: dict
  meta: dict | None = None
  trained_block_size: int | None = None


def from_workdir(workdir: str, *, step: int | None = None,
                 dtype: str | None = None) -> Loaded:
  """The latest (or given) checkpoint of a training workdir (Orbax); the
  run's sample settings become the default, and SFT runs default to chat. A
  block-diffusion run gets the block sampler with the block size it was
  trained with, one step per token (as `launch.sample`)."""
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  config, params, tokenizer = checkpoint.restore_for_inference(
      workdir, step=step, dtype=dtype)
  meta = checkpoint.read_meta(workdir, step)
  s, train = meta['config']['sample'], meta['config']['train']
  blocks = train.get('objective') == 'block_diffusion'
  if blocks:
    sampling = block_rows.defaults(meta)
  else:
    sampling = gen.SamplingConfig(steps=s['steps'], gen_length=s['gen_length'],
                                  block_length=s['block_length'],
                                  temperature=s['temperature'])
  return Loaded(params, config, tokenizer,
                dict(default_sampling=sampling, chat=train['objective'] == 'sft',
                     name=os.path.basename(os.path.abspath(workdir))),
                meta=meta, trained_block_size=sampling.block_length if blocks else None)


def from_hf_dir(path: str, *, dtype: str | None = None) -> Loaded:
  """A local Hugging Face directory (config.json, safetensors, tokenizer
  files) of any built-in family, a released checkpoint or an export
  (`interop/hf_dir.py`); its generation_config.json's sample settings become
  the default. Chat defaults on when the tokenizer has a template."""
  from dllm_jax.interop import hf_dir  # pylint: disable=g-import-not-at-top
  loaded = hf_dir.load(path, dtype=dtype)
  defaults = dict(chat=bool(getattr(loaded.tokenizer, 'chat_template', None)),
                  name=os.path.basename(os.path.abspath(path)))
  sampling = hf_dir.default_sampling(loaded.generation)
  if sampling is not None:
    defaults['default_sampling'] = sampling
  size = (int(loaded.generation['block_length'])
          if loaded.generation.get('block_diffusion') else None)
  if size is None and getattr(type(loaded.config), 'family', None) == 'llada2':
    # A released LLaDA2 directory (no generation keys of this project's): the
    # family is trained with block diffusion at block 32 (dFactory's
    # train_llada2_bd), so its likelihood is the block NELBO at that size.
    size = LLADA2_BLOCK_SIZE
  return Loaded(loaded.params, loaded.config, loaded.tokenizer, defaults,
                trained_block_size=size)
