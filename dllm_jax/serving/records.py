"""What goes into the `Engine` and what comes out: `Request` and `Completion`
(plain records, no engine code: the engine, the stepper, the batcher and the
server all import them from here)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation request.

  Attributes:
    prompt: text (encoded after a BOS token, or as a user turn of the chat
      format when `chat`), or token ids [P] used as given.
    sampling: the sampler's settings (`gen_length` is the number of new
      tokens): a `SamplingConfig`, a `BlockSamplingConfig` for a
      block-diffusion model, or the settings of any registered sampler
      (`serving/sampler.py`); None: the engine's defaults.
    seed: the row's PRNG seed in [0, 2**32): same seed, same answer.
    chat: render a text prompt with the tokenizer's chat template.
    max_tokens: the answer is cut to this many tokens (None: gen_length); the
      server rounds a request's max_tokens up to a length bucket
      (`Engine.sampling_for_max_tokens`) and cuts the answer here, and a
      stepped row leaves its batch at the block boundary that reached it.
  """
  prompt: str | Sequence[int] | np.ndarray
  sampling: Any = None
  seed: int = 0
  chat: bool = False
  max_tokens: int | None = None


@dataclasses.dataclass
class Completion:
  """One request's answer: `tokens` [G] (and the step that committed each, [G];
  -1 from the block sampler), decoded `text` (up to EOS / end-of-turn), the
  model evaluations its row took (`nfe`; `decisions` those that decided its
  tokens, the reference's count; `forwards` all, with the block sampler's cache
  prefill and block writes), and `finish_reason` ('stop' when the model
  ended the answer, else 'length'). G is gen_length (or the request's
  `max_tokens`), fewer where the block sampler stopped at EOS (EOS included)
  or a stop sequence ended the row (more, up to the last block's end, where
  LLaDA2.0's eos_early_stop ended it at an EOS past gen_length, as the
  reference does)."""
  tokens: np.ndarray
  commit_step: np.ndarray
  text: str
  nfe: int
  prompt_tokens: int
  finish_reason: str
  decisions: int = -1
  forwards: int = -1
