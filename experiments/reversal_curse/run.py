r"""The reversal curse at small scale: diffusion LM vs its autoregressive twin.

  python experiments/reversal_curse/run.py        # ~13 min on 2 CPU cores

Both models (the same Transformer, `causal` off/on; same size, tokenizer, data,
steps and optimizer) train on forward-only text:
  * the 469 classical couplets of data/llada_poem_pairs.json (from LLaDA), as
    "first，second。";
  * 200 synthetic facts "NAME is DESCRIPTION." generated from a seed.
Then exact-match accuracy, greedy decoding, for
  forward  first -> second (couplets), NAME -> DESCRIPTION (facts);
  reverse  second -> first, DESCRIPTION -> NAME.
Queries: the autoregressive twin continues a prompt: forward "first，", reverse
"second，" (it can only condition on a prefix). The diffusion model fills masks
in the training layout: forward "first，[M]*n", reverse "[M]*n，second。" (the same
text with the other side masked); its score on the twin's reversed prompt is
reported too. A query is right when its tokens equal the line's. Tokens: by
default a SentencePiece BPE model trained on the texts (a Chinese character or a
frequent word is one token, as in LLaDA's vocabulary); `char` gives one token per
character; with UTF-8 bytes (`byte`, three tokens per Chinese character) the tiny
diffusion model memorises nothing in this budget (see README). Writes
results.md and results.png next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax.sampling import autoregressive  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
TOK = common.TOKENIZER  # Replaced by a character tokenizer with --tokenizer=char.

FIRST = ['Ada', 'Boris', 'Celia', 'Dmitri', 'Elena', 'Farid', 'Greta', 'Hugo', 'Ines',
         'Jonas', 'Kira', 'Lars', 'Mira', 'Nils', 'Olga', 'Pavel', 'Quinn', 'Rosa',
         'Sven', 'Tara']
LAST = ['Abbot', 'Brandt', 'Corvin', 'Dorsey', 'Ellis', 'Faber', 'Grimm', 'Holt',
        'Ivers', 'Jansen', 'Keller', 'Lund', 'Marsh', 'Novak', 'Oakes', 'Pryce']
ROLES = ['author', 'composer', 'director', 'inventor', 'founder', 'painter']
SYL = ['ka', 'lo', 'mi', 'ren', 'tal', 'vo', 'shi', 'dun', 'bra', 'ez', 'qui', 'ol']


def synthetic_facts(n: int, seed: int) -> list[tuple[str, str]]:
  rng = np.random.default_rng(seed)
  names, facts = set(), []
  while len(facts) < n:
    name = f'{rng.choice(FIRST)} {rng.choice(LAST)}'
    if name in names:
      continue
    names.add(name)
    work = ''.join(rng.choice(SYL, rng.integers(2, 4))).capitalize()
    facts.append((name, f'the {rng.choice(ROLES)} of {work}'))
  return facts


def _groups(items, key):
  out = {}
  for i, item in enumerate(items):
    out.setdefault(key(item), []).append(i)
  return out


def diffusion_fill(params, cfg, canvases: list[list[int]]) -> list[list[int]]:
  """Fills the masks of each canvas, 1 token per step, greedy low-confidence.

  Canvases are right-padded to one length (padding is its own segment, as in
  training) and run with steps = the largest mask count: with one block, a row
  with n masks commits one token in each of its first n steps and none after,
  exactly as with steps = n. One compiled sampler serves every query.
  """
  t = max(len(c) for c in canvases)
  steps = max(c.count(cfg.mask_id) for c in canvases)
  canvas = np.full((len(canvases), t), cfg.pad_id, np.int32)
  real = np.zeros((len(canvases), t), bool)
  for i, c in enumerate(canvases):
    canvas[i, :len(c)], real[i, :len(c)] = c, True
  sc = gen.SamplingConfig(steps=steps, gen_length=t, block_length=t)
  filled = np.asarray(gen.infill(params, canvas, jax.random.key(0), config=cfg,
                                 sampling=sc, canvas_mask=real))
  return [row[:len(c)].tolist() for row, c in zip(filled, canvases)]


def ar_continue(params, cfg, prompts: list[list[int]], lengths: list[int]):
  """Greedy continuations (KV cache). Prompts of one length share a batch that
  generates the longest length asked; shorter answers are its prefixes (a causal
  model's earlier tokens do not depend on later ones)."""
  out = [None] * len(prompts)
  for p, idx in _groups(prompts, len).items():
    n = max(lengths[i] for i in idx)
    res = np.asarray(autoregressive.greedy(
        params, np.array([prompts[i] for i in idx]), config=cfg, gen_length=n))
    for j, i in enumerate(idx):
      out[i] = res[j, p:p + lengths[i]].tolist()
  return out


def enc(text: str) -> list[int]:
  return TOK.encode(text).tolist()


def split(left: str, sep: str, right: str, end: str) -> tuple[str, str]:
  """(known prefix, answer) texts of the line left+sep+right+end, cut where
  every tokenizer has a token boundary: before the space that starts `sep`'s
  last word (" is| the ...") or, without spaces, right after `sep` ("，|")."""
  prefix = (left + sep).rstrip(' ')
  return prefix, (left + sep + right + end)[len(prefix):]


def evaluate(params_d, cfg_d, params_ar, cfg_ar, pairs, sep, end):
  """pairs of (left, right) written as left+sep+right+end. Returns exact-match
  accuracies; a query is right when its tokens equal the line's tokens."""
  bos, eos, m = TOK.bos_id, TOK.eos_id, cfg_d.mask_id
  res = {}
  fwd_parts = [split(a, sep, b, end) for a, b in pairs]  # first -> second.
  rev_parts = [(a, (sep + b + end)) for a, b in pairs]  # Mask the first side.
  revp_parts = [split(b, sep, a, end) for a, b in pairs]  # Known side first.
  lines = lambda parts: [[bos] + enc(p) + enc(q) + [eos] for p, q in parts]
  # Diffusion, masks in the training layout.
  fwd = [[bos] + enc(p) + [m] * len(enc(q)) + [eos] for p, q in fwd_parts]
  rev = [[bos] + [m] * len(enc(p)) + enc(q) + [eos] for p, q in rev_parts]
  revp = [[bos] + enc(p) + [m] * len(enc(q)) + [eos] for p, q in revp_parts]
  got = diffusion_fill(params_d, cfg_d, fwd + rev + revp)
  k = len(pairs)
  score = lambda got, want: float(np.mean([g == w for g, w in zip(got, want)]))
  res['diffusion', 'forward'] = score(got[:k], lines(fwd_parts))
  res['diffusion', 'reverse'] = score(got[k:2 * k], lines(rev_parts))
  res['diffusion', 'reverse (reversed prompt)'] = score(got[2 * k:], lines(revp_parts))
  if params_ar is None:  # --only_diffusion
    return res
  # Autoregressive twin: continue a prefix.
  for name, parts in (('forward', fwd_parts), ('reverse (reversed prompt)', revp_parts)):
    out = ar_continue(params_ar, cfg_ar, [[bos] + enc(p) for p, _ in parts],
                      [len(enc(q)) for _, q in parts])
    res['autoregressive', name] = score(out, [enc(q) for _, q in parts])
  return res


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--poems', default=os.path.join(HERE, 'data',
                                                    'llada_poem_pairs.json'))
  parser.add_argument('--steps', type=int, default=1200)
  parser.add_argument('--num_poems', type=int, default=None,
                      help='use only the first N couplets (default: all)')
  parser.add_argument('--num_facts', type=int, default=200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--batch_rows', type=int, default=32)
  parser.add_argument('--tokenizer', choices=('byte', 'char', 'bpe'), default='bpe',
                      help='byte: UTF-8 bytes (a Chinese character is 3 tokens); '
                      'char / bpe: a SentencePiece character / BPE model trained on '
                      'the texts')
  parser.add_argument('--vocab_size', type=int, default=2048,
                      help='upper bound for --tokenizer=bpe')
  parser.add_argument('--layers', type=int, default=None,
                      help='model depth (default: the tiny preset\'s)')
  parser.add_argument('--only_diffusion', action='store_true',
                      help='skip the autoregressive twin (quick probes)')
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  if args.num_poems is not None and args.num_poems < 1:
    raise ValueError(f'--num_poems={args.num_poems}: use at least 1 (or omit for all).')
  t0 = time.time()
  with open(args.poems) as f:
    poems = [(p['first'], p['second']) for p in json.load(f)][:args.num_poems]
  facts = synthetic_facts(args.num_facts, args.seed)
  texts = [f'{a}，{b}。' for a, b in poems] + [f'{n} is {d}.' for n, d in facts]
  global TOK
  if args.tokenizer != 'byte':
    import tempfile  # pylint: disable=g-import-not-at-top
    from dllm_jax.tokenizers import sp as sp_tokenizer  # pylint: disable=g-import-not-at-top
    path = sp_tokenizer.train(
        texts, os.path.join(tempfile.mkdtemp(), args.tokenizer),
        vocab_size=4096 if args.tokenizer == 'char' else args.vocab_size,
        model_type=args.tokenizer, hard_vocab_limit=False)
    TOK = sp_tokenizer.SentencePieceTokenizer(path)
  rows = common.packed_rows(texts, 128, args.seed, tokenizer=TOK)
  print(f'{len(poems)} couplets + {len(facts)} facts, forward only; '
        f'{args.steps} steps per model; {args.tokenizer} tokenizer '
        f'({TOK.vocab_size} ids), {len(rows["tokens"])} rows of 128', flush=True)
  shape = {} if args.layers is None else {'n_layers': args.layers}
  cfg_d = common.model_config(False, tokenizer=TOK, **shape)
  cfg_ar = common.model_config(True, tokenizer=TOK, **shape)
  train = lambda cfg: common.train(rows, cfg, steps=args.steps, seed=args.seed,
                                  lr=args.lr, batch_size=args.batch_rows)
  params_d = train(cfg_d)
  params_ar = None if args.only_diffusion else train(cfg_ar)
  results = {'couplets': evaluate(params_d, cfg_d, params_ar, cfg_ar, poems, '，', '。'),
             'facts': evaluate(params_d, cfg_d, params_ar, cfg_ar, facts, ' is ', '.')}
  write_report(results, args, len(poems), len(facts), time.time() - t0,
               cfg_d.num_params())


def _reduced_flags(args) -> str:
  """The size-reducing flags given (they have no default), for the command line."""
  return ''.join(f' --{k}={getattr(args, k)}' for k in ('num_poems', 'layers')
                 if getattr(args, k) is not None)


def write_report(results, args, n_poems, n_facts, seconds, num_params):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [('diffusion', 'forward'), ('diffusion', 'reverse'),
          ('diffusion', 'reverse (reversed prompt)'), ('autoregressive', 'forward'),
          ('autoregressive', 'reverse (reversed prompt)')]
  lines = [
      '# Reversal curse: exact-match accuracy', '',
      f'Command: `python experiments/reversal_curse/run.py --steps={args.steps} '
      f'--num_facts={args.num_facts} --seed={args.seed} --lr={args.lr} '
      f'--tokenizer={args.tokenizer}{_reduced_flags(args)}` ({seconds / 60:.1f} min on '
      f'this machine, 2 CPU cores). Both models: the `tiny` shape ({num_params / 1e6:.2f}M parameters '
      f'with the {TOK.vocab_size}-id {args.tokenizer} tokenizer), the same '
      f'{n_poems} couplets + {n_facts} synthetic facts written forward only, '
      f'{args.steps} steps of {args.batch_rows} packed rows of 128 tokens, learning rate '
      f'{args.lr}, greedy decoding.', '',
      '| model | query | couplets | facts |', '|---|---|---|---|']
  rows = [r for r in rows if r in results['couplets']]
  for model_name, query in rows:
    lines.append(f'| {model_name} | {query} | '
                 f'{results["couplets"][model_name, query]:.3f} | '
                 f'{results["facts"][model_name, query]:.3f} |')
  lines += ['', 'forward: first -> second, NAME -> DESCRIPTION. reverse: second -> '
            'first, DESCRIPTION -> NAME. The diffusion model fills masks in the '
            'training layout (`[M]*n，second。`); "reversed prompt" puts the known side '
            'first (`second，` then the answer), the only way to ask an '
            'autoregressive model.']
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
  for ax, task in zip(axes, ('couplets', 'facts')):
    labels = [f'{m[:4]}.\n{q.replace(" (reversed prompt)", "*")}' for m, q in rows]
    ax.bar(labels, [results[task][r] for r in rows],
           color=['C0' if m == 'diffusion' else 'C1' for m, _ in rows])
    ax.set_title(task)
    ax.set_ylim(0, 1)
    ax.tick_params(axis='x', labelsize=7)
  axes[0].set_ylabel('exact match')
  fig.suptitle('Reversal curse (* = reversed prompt)')
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'results.png'), dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
