"""A small chat dataset with checkable answers, generated from a seed.

Tasks: reverse a word, add two numbers, upper-case a word, sort letters. About
a tenth of the examples use the `messages` form instead of prompt/response, so
both record shapes are exercised. Used by the tests and the README's SFT example.
"""

from __future__ import annotations

import json
import os
import random

TASKS = ('reverse', 'add', 'upper', 'sort')


def example(rng: random.Random) -> dict[str, str]:
  task = rng.choice(TASKS)
  word = ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz')
                 for _ in range(rng.randint(3, 7)))
  if task == 'reverse':
    return {'prompt': f'reverse {word}', 'response': word[::-1]}
  if task == 'upper':
    return {'prompt': f'upper {word}', 'response': word.upper()}
  if task == 'sort':
    return {'prompt': f'sort {word}', 'response': ''.join(sorted(word))}
  a, b = rng.randint(0, 99), rng.randint(0, 99)
  return {'prompt': f'add {a} {b}', 'response': str(a + b)}


def write(out_dir: str, *, num_train: int = 4000, num_validation: int = 200,
          seed: int = 0) -> dict[str, str]:
  """Writes OUT_DIR/{train,validation}.jsonl; returns {split: path}."""
  rng = random.Random(seed)
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for split, n in (('train', num_train), ('validation', num_validation)):
    paths[split] = os.path.join(out_dir, f'{split}.jsonl')
    with open(paths[split], 'w') as f:
      for _ in range(n):
        ex = example(rng)
        if rng.random() < 0.1:
          ex = {'messages': [{'role': 'user', 'content': ex['prompt']},
                             {'role': 'assistant', 'content': ex['response']}]}
        f.write(json.dumps(ex) + '\n')
  return paths
