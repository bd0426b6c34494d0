"""Training objectives: how a data batch becomes the loss batch of one step.

  obj = objectives.get('pretrain')             # or sft, next_token, block_diffusion
  lb = obj.loss_batch(batch, key, settings)    # a `masked.LossBatch`
  loss = objectives.masked.loss_from_logits(logits, lb)

`masked.py` is masked diffusion (LLaDA's forward process and loss), `block.py`
block diffusion (BD3-LM), `registry.py` names them for the config.
"""

from dllm_jax.objectives import block, masked
from dllm_jax.objectives.registry import (BLOCK_DIFFUSION, DATA_KINDS, NEXT_TOKEN,
                                          PRETRAIN, SFT, Objective, Settings,
                                          chat_schema, get, names, register,
                                          text_schema)
