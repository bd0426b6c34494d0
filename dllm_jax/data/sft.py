"""Chat examples -> the LLaDA SFT row format.

A row is `prompt ids | response ids, end-of-turn | EOS ... EOS` of fixed length;
`prompt_length` marks where the answer starts. The SFT loss never masks the
prompt and treats the EOS padding as part of the answer (so the model learns
where to stop). The prompt is rendered by the tokenizer's chat template when it
has one (LLaDA's `tokenizer.json`), else by a plain byte-friendly template:

  BOS "user: {content}" EOT ... "assistant: "
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dllm_jax.data.sources import RecordError


def messages_of(record: dict[str, Any], prompt_field: str = 'prompt',
                response_field: str = 'response') -> tuple[list[dict], str]:
  """(messages before the answer, the answer) from a record with either
  `prompt`/`response` fields or a `messages` list ending in the assistant turn."""
  if 'messages' in record:
    msgs = record['messages']
    if (not isinstance(msgs, list) or not msgs or not all(
        isinstance(m, dict) and 'role' in m and 'content' in m for m in msgs)
        or msgs[-1]['role'] != 'assistant'):
      raise RecordError("'messages' must be a list of {role, content} ending with "
                        'an assistant turn')
    return msgs[:-1], str(msgs[-1]['content'])
  missing = [f for f in (prompt_field, response_field) if f not in record]
  if missing:
    raise RecordError(f'no field(s) {missing} (fields: {sorted(record)})')
  return ([{'role': 'user', 'content': str(record[prompt_field])}],
          str(record[response_field]))


def prompt_ids(tokenizer, messages: list[dict]) -> np.ndarray:
  """The prompt as the model sees it, up to where the assistant's answer starts."""
  if getattr(tokenizer, 'chat_template', None):
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(text)
  ids = tokenizer.special_ids
  parts = [np.array([ids.bos], np.int32)]
  for m in messages:
    parts += [tokenizer.encode(f'{m["role"]}: {m["content"]}'),
              np.array([ids.eot], np.int32)]
  parts.append(tokenizer.encode('assistant: '))
  return np.concatenate(parts)


def sft_row(tokenizer, messages: list[dict], response: str,
            seq_len: int) -> dict[str, np.ndarray]:
  """{tokens [seq_len], prompt_lengths []} or RecordError if it does not fit."""
  ids = tokenizer.special_ids
  prompt = prompt_ids(tokenizer, messages)
  answer = np.concatenate([tokenizer.encode(response),
                           np.array([ids.eot], np.int32)])
  n = len(prompt) + len(answer)
  if n > seq_len:
    raise RecordError(f'example of {n} tokens does not fit a row of {seq_len}')
  tokens = np.full((seq_len,), ids.eos, np.int32)
  tokens[:len(prompt)] = prompt
  tokens[len(prompt):n] = answer
  return {'tokens': tokens, 'prompt_lengths': np.asarray(len(prompt), np.int32)}
