r"""SFT learns the synthetic chat tasks: exact-match accuracy per task.

  python experiments/sft_tasks/run.py                 # ~18 min on 2 CPU cores
  python experiments/sft_tasks/run.py --workdir=/tmp/dllm_sft   # evaluate a run

Trains the README's SFT example (`launch/configs/sft.py`: LLaDA's SFT loss on
`python -m launch.make_sft_data`'s reverse / add / upper / sort chats, the byte
tokenizer) with the `tiny` width at --layers layers for --steps steps, unless
--workdir already holds a finished run, then answers every validation prompt
greedily (one token per step, the whole answer as one block) and counts
answers equal to the reference. Writes results.md next to this file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax.data import sft as sft_lib, synthetic_sft  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.training import checkpoint, trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch.configs import sft as sft_config  # pylint: disable=g-import-not-at-top,wrong-import-position

GEN = 16  # Answer tokens (answers are at most 8 bytes, then end-of-turn and EOS).


def evaluate(workdir: str, records: list[dict]) -> dict[str, list[bool]]:
  """Greedy answers to every record's prompt; per task, whether each is exact."""
  cfg, params, tok = checkpoint.restore_for_inference(workdir)
  sampling = gen.SamplingConfig(steps=GEN, gen_length=GEN, block_length=GEN,
                                temperature=0.0)
  by_len = collections.defaultdict(list)  # Prompts of one length share a batch.
  for rec in records:
    messages, response = sft_lib.messages_of(rec)
    ids = sft_lib.prompt_ids(tok, messages)
    by_len[len(ids)].append((ids, response, messages[-1]['content'].split()[0]))
  correct = collections.defaultdict(list)
  for group in by_len.values():
    prompts = np.stack([ids for ids, _, _ in group])
    out = np.asarray(gen.generate(params, prompts, jax.random.key(0), config=cfg,
                                  sampling=sampling))
    for row, (ids, response, task) in zip(out, group):
      correct[task].append(tok.decode(row[len(ids):]) == response)
  return correct


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default=None, help='Evaluate (or train into) this run.')
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--steps', type=int, default=4000)
  parser.add_argument('--decay_fraction', type=float, default=0.3,
                      help='Share of the steps in the learning-rate decay.')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--num_train', type=int, default=4000, help='training examples')
  parser.add_argument('--num_validation', type=int, default=200,
                      help='validation prompts (all are scored)')
  parser.add_argument('--data', default=os.path.join(tempfile.gettempdir(), 'sft_data'))
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  t0 = time.time()
  paths = synthetic_sft.write(args.data, num_train=args.num_train,
                              num_validation=args.num_validation)
  workdir = args.workdir or os.path.join(tempfile.gettempdir(), 'dllm_sft_tasks')
  config = sft_config.get_config()
  config.data.source = f'jsonl:{os.path.join(args.data, "{split}.jsonl")}'
  config.model.n_layers = args.layers
  config.train.steps = args.steps
  config.train.batch_size = args.batch_size
  config.train.log_every = 500
  config.optimizer.decay_fraction = args.decay_fraction
  try:
    done_before = checkpoint.read_meta(workdir)['step'] >= args.steps
  except FileNotFoundError:
    done_before = False
  trainer.train(config, workdir)  # Resumes, or returns at once when finished.
  trained = (f'the finished run in {workdir}' if done_before else
             f'trained in {(time.time() - t0) / 60:.1f} min on '
             f'{jax.devices()[0].device_kind} ({os.cpu_count()} cores)')
  with open(paths['validation']) as f:
    correct = evaluate(workdir, [json.loads(line) for line in f if line.strip()])
  reduced = ''.join(f' --{k}={getattr(args, k)}'  # Size flags off their defaults.
                    for k in ('batch_size', 'num_train', 'num_validation')
                    if getattr(args, k) != parser.get_default(k))
  lines = [
      '# SFT on the synthetic chat tasks', '',
      f'`python experiments/sft_tasks/run.py --layers={args.layers} '
      f'--steps={args.steps}{reduced}`: the `tiny` width (d_model 128) at {args.layers} '
      f'layers, {args.steps} steps of {args.batch_size} rows of 48 tokens (learning-rate '
      f'decay over the last {args.decay_fraction:.0%}), LLaDA SFT loss, byte tokenizer; '
      f'{trained}. Validation prompts ({args.num_validation}, unseen), greedy, one '
      'token per step:',
      '',
      '| task | examples | exact match |', '|---|---|---|']
  for task in sorted(correct):
    lines.append(f'| {task} | {len(correct[task])} | {np.mean(correct[task]):.3f} |')
  every = [c for cs in correct.values() for c in cs]
  lines.append(f'| all | {len(every)} | {np.mean(every):.3f} |')
  text = '\n'.join(lines) + '\n'
  print(text)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(text)


if __name__ == '__main__':
  main()
