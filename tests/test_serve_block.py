"""Serving a block-diffusion checkpoint: the block sampler stepped block by
block (rows joining at different blocks, ragged prompts) equals `block.generate`
token for token; a row that produced EOS leaves at the end of that block and
its slot takes a queued request; the server answers with the block sampler
(finish reasons, usage, one event per committed block, 4xx for settings it
does not take). The checkpoint (`eos_block_workdir`) has random weights that
end answers early; prompts and seeds below end in different blocks."""

import dataclasses
import json

import httpx
import jax
import numpy as np
import pytest

from dllm_jax.sampling import block
from dllm_jax.serving import Engine, Request
from dllm_jax.serving.batcher import Batcher
from tests import support

# (prompt, seed, answer length): BOS + prompt is 5-7 tokens (blocks of 4, so
# answers start at offsets 1-3 of a block); EOS ends 'more' in its first
# answer block, 'abcd' in its second, 'prompt' in its third; 'hello' runs to
# max_tokens 12 (the lengths pin the checkpoint's behaviour; the parity below
# holds whatever they are).
ROWS = (('more', 5, 3), ('abcd', 0, 7), ('prompt', 2, 9), ('hello', 1, 12))


def blocks_run(n_prompt: int, length: int) -> int:
  """Blocks a row of an n-token prompt computes for an answer of `length`
  tokens (ending at its EOS block), with blocks of 4."""
  return (n_prompt % 4 + length - 1) // 4 + 1


@pytest.fixture(scope='module')
def engine(eos_block_workdir):
  """Batches of 4 rows, prompts bucketed to 16 tokens (a canvas of 4 prompt
  blocks + 4 answer blocks): the server below compiles the same program."""
  return Engine.from_workdir(eos_block_workdir, batch_sizes=(4,), prompt_buckets=(16,))


def alone(engine, prompt: str, seed: int, sampling=None):
  """`block.generate` on one prompt with `jax.random.key(seed)`: (tokens up to
  and including EOS, nfe). Prompts are padded to 7 tokens: the 5-7 token
  prompts share one layout, so one compile serves them all."""
  ids = engine.encode(prompt)
  padded = np.zeros((1, 7), np.int32)
  padded[0, :len(ids)] = ids
  out = block.generate(engine.params, padded, jax.random.key(seed), config=engine.config,
                       sampling=sampling or engine.default_sampling,
                       prompt_lengths=[len(ids)])
  return np.asarray(out.tokens[0, :int(out.lengths[0])]), int(out.nfe)


@pytest.fixture(scope='module')
def at_once(engine):
  """`Engine.generate` of ROWS at the default settings, all rows at once: what
  the server must answer (the parity test shows each equals its row alone)."""
  return engine.generate([Request(p, seed=s) for p, s, _ in ROWS])


def test_stepped_block_rows_equal_block_generate(engine, at_once):
  """Rows join at block boundaries 0, 0, 1, 2 (the later ones beside rows that
  already left at their EOS), shifted on the bucket's canvas: each answers,
  token for token and in model calls, what `block.generate` does alone;
  `Engine.generate` (all rows at once) too."""
  sc = engine.default_sampling
  assert isinstance(sc, block.BlockSamplingConfig) and sc.temperature > 0
  reqs = [Request(p, sc, seed=s) for p, s, _ in ROWS]
  stepped = support.step_rows(engine, list(zip((0, 0, 1, 2), reqs)))
  assert engine.num_compiled == 1  # One block step serves both.
  for (prompt, seed, length), got, again in zip(ROWS, stepped, at_once):
    tokens, nfe = alone(engine, prompt, seed)
    np.testing.assert_array_equal(got.tokens, tokens)
    assert len(tokens) == length and got.nfe == nfe
    stops = length < sc.gen_length
    assert got.finish_reason == ('stop' if stops else 'length')
    assert got.text == engine.tokenizer.decode(tokens)
    np.testing.assert_array_equal(again.tokens, got.tokens)
    assert again.nfe == got.nfe


def test_rows_differing_in_floats_share_one_batch_and_program(engine):
  """Temperatures, thresholds and editing thresholds are each row's own
  (`BlockKnobs`): such rows step in one batch of one compiled program, and
  `block.generate` compiles once for all of them; each row answers what it
  does alone."""
  sc = dataclasses.replace(engine.default_sampling, parallel='threshold',
                           editing_threshold=0.9)
  floats = [(0.7, 0.5, 0.9), (1.3, 0.9, 0.6), (0.4, 0.2, 0.95), (1.0, 0.7, 0.8)]
  scs = [dataclasses.replace(sc, temperature=t, threshold=h, editing_threshold=e)
         for t, h, e in floats]
  reqs = [Request(p, c, seed=s) for (p, s, _), c in zip(ROWS, scs)]
  before = engine.num_compiled
  stepped = support.step_rows(engine, list(zip((0, 0, 1, 2), reqs)))
  assert engine.num_compiled == before + 1
  traces = block._sample._cache_size()  # pylint: disable=protected-access
  for (prompt, seed, _), c, got in zip(ROWS, scs, stepped):
    tokens, nfe = alone(engine, prompt, seed, c)
    np.testing.assert_array_equal(got.tokens, tokens)
    assert got.nfe == nfe
  assert block._sample._cache_size() <= traces + 1  # pylint: disable=protected-access
  assert len({tuple(g.tokens) for g in stepped}) == len(ROWS)


def test_a_row_leaves_at_its_eos_block_and_a_queued_request_takes_its_slot(engine):
  """Five requests for four rows: 'more' ends in its first block, so the fifth
  joins after one block call, not after four (when rows ran to max_tokens)."""
  batcher = Batcher(engine, max_batch=4, window_s=0.0)
  sc = engine.default_sampling
  jobs = [batcher.submit(Request(p, sc, seed=s)) for p, s, _ in ROWS + (ROWS[-1],)]
  batcher.start()
  answers = [j.future.result(timeout=300) for j in jobs]
  batcher.stop()
  for (_, _, length), a in zip(ROWS + (ROWS[-1],), answers):
    assert len(a.tokens) == length
  np.testing.assert_array_equal(answers[-1].tokens, answers[-2].tokens)
  assert batcher.joined == 1 and batcher.batches == 1
  assert batcher.block_calls == 1 + 4  # The fifth's 4 blocks after 'more''s one.
  assert batcher.row_blocks == sum(
      blocks_run(len(engine.encode(p)), n) for p, _, n in ROWS + (ROWS[-1],))


@pytest.fixture(scope='module')
def server(engine):
  """The server's app over `engine` in this process (its compiled step shared):
  an httpx-compatible client whose base URL is ''. `launch.serve` itself
  runs in the slow test at the end."""
  from fastapi.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  app = server_lib.create_app(engine, Batcher(engine, max_batch=4),
                              server_lib.Limits(max_tokens=12))
  with TestClient(app) as client:  # Starts the batcher; stops it after.
    yield client


def post(client, **body):
  return client.post('/v1/completions', json=body)


def test_server_answers_with_the_block_sampler(server, engine, at_once):
  """Answers equal the engine's; EOS rows finish 'stop' with their real token
  count, having computed only up to their EOS block; a stream sends one event
  per committed block."""
  before = server.get('/health').json()
  for (prompt, seed, length), want in zip(ROWS, at_once):
    r = post(server, prompt=prompt, seed=seed)
    assert r.status_code == 200, r.text
    choice, usage = r.json()['choices'][0], r.json()['usage']
    assert choice['text'] == want.text
    stops = length < 12
    assert choice['finish_reason'] == ('stop' if stops else 'length')
    assert usage['completion_tokens'] == length - stops  # EOS is not a token of the text.
  after = server.get('/health').json()
  assert after['row_blocks'] - before['row_blocks'] == sum(
      blocks_run(len(engine.encode(p)), n) for p, _, n in ROWS)
  prompt, seed, length = ROWS[2]  # EOS in its third block.
  with server.stream('POST', '/v1/completions',
                     json={'prompt': prompt, 'seed': seed, 'stream': True}) as r:
    lines = [l for l in r.iter_lines() if l.startswith('data: ')]
  events = [json.loads(l[len('data: '):]) for l in lines[:-1]]
  assert lines[-1] == 'data: [DONE]' and len(events) == 3
  assert events[-1]['choices'][0]['finish_reason'] == 'stop'
  assert ''.join(e['choices'][0]['text'] for e in events) == at_once[2].text


def test_a_stop_sequence_or_max_tokens_ends_a_block_row_early(server, engine, at_once):
  """'hello' runs 4 blocks to max_tokens 12; a stop sequence in its first
  block, or max_tokens 9 (the 12-token bucket, cut), ends its row after the
  block that reached it (fewer block calls), its answer the whole one cut."""
  prompt, seed, _ = ROWS[3]
  whole = at_once[3].text  # '\x0b' * 12 (the checkpoint's favourite).
  blocks = lambda: server.get('/health').json()['row_blocks']
  before = blocks()
  r = post(server, prompt=prompt, seed=seed, stop=whole[:2]).json()
  assert r['choices'][0]['text'] == '' and r['choices'][0]['finish_reason'] == 'stop'
  assert blocks() - before < blocks_run(len(engine.encode(prompt)), 12)
  before = blocks()
  r = post(server, prompt=prompt, seed=seed, max_tokens=9).json()  # 12 tokens, cut.
  assert r['choices'][0]['finish_reason'] == 'length'
  assert engine.tokenizer.decode(at_once[3].tokens[:9]) == r['choices'][0]['text']
  assert blocks() - before < blocks_run(len(engine.encode(prompt)), 12)


def test_steps_beyond_the_block_length_answer_as_the_block_length(server):
  """More steps than a block has tokens: the same answer from the same compiled
  program as steps = block length (a huge count stalled the worker building
  its schedule for minutes, or failed with a 500; the server now also caps
  steps at Limits.max_steps)."""
  prompt, seed, _ = ROWS[1]
  want = post(server, prompt=prompt, seed=seed, steps=4).json()['choices']
  compiled = server.get('/health').json()['compiled']
  r = post(server, prompt=prompt, seed=seed, steps=1000)
  assert r.status_code == 200, r.text
  assert r.json()['choices'] == want
  assert server.get('/health').json()['compiled'] == compiled


def test_reference_knobs_per_request_and_forward_counts_in_usage(server, engine):
  """minimal_topk and eos_early_stop as request fields: the answer and the
  usage's forward counts (decisions, all) equal `block.generate`'s alone."""
  prompt, seed, _ = ROWS[2]
  r = post(server, prompt=prompt, seed=seed, minimal_topk=4, eos_early_stop=True)
  assert r.status_code == 200, r.text
  sc = dataclasses.replace(engine.default_sampling, minimal_topk=4, eos_early_stop=True)
  assert sc.decision_steps() == 3 < sc.steps  # gen_length 12 // 4.
  ids = engine.encode(prompt)
  out = block.generate(engine.params, ids[None], jax.random.key(seed),
                       config=engine.config, sampling=sc)
  tokens = np.asarray(out.tokens[0, :int(out.lengths[0])])
  assert r.json()['choices'][0]['text'] == engine.tokenizer.decode(tokens)
  usage = r.json()['usage']
  assert usage['decision_forwards'] == int(out.decisions[0]) > 0
  assert usage['forwards'] == int(out.forwards) > usage['decision_forwards']


@pytest.mark.parametrize('body, reason', [
    ({'cache': 'dual'}, 'cache is not a setting of the block sampler'),
    ({'cfg_scale': 1.0}, 'cfg_scale is not a setting of the block sampler'),
    ({'block_length': 8}, 'block_length=8 differs from the block size 4'),
    ({'threshold': 1.5}, 'threshold must be in (0, 1], got 1.5'),
    ({'min_tokens': -1}, 'min_tokens must be >= 0, got -1'),
    ({'steps': 0}, 'steps must be in [1, 1024], got 0'),
    ({'factor': 0.0}, 'factor must be positive'),
    ({'threshold_rule': 'mine'}, "threshold_rule: Input should be 'llada2' or 'dinfer'"),
    ({'prompt': []}, 'needs a prompt of at least 1 token, got 0'),
    ({'minimal_topk': 0}, 'minimal_topk must be positive, got 0'),
    ({'minimal_topk': 13}, 'minimal_topk must be at most gen_length 12'),
    ({'eos_early_stop': 'maybe'}, 'eos_early_stop: Input should be a valid boolean'),
])
def test_block_settings_are_checked_with_one_line_400s(server, body, reason):
  r = post(server, **{'prompt': 'x', **body})
  assert r.status_code == 400, r.text
  message = r.json()['error']['message']
  assert reason in message and '\n' not in message, message


@pytest.mark.slow
@pytest.mark.parametrize('knobs', [
    dict(temperature=0.0),
    dict(parallel='threshold', threshold=0.5, threshold_rule='dinfer'),
    dict(parallel='factor', factor=2.0, fuse_write=True),
    dict(min_tokens=2, editing_threshold=0.5, cache=False),
])
def test_stepped_block_rows_equal_block_generate_across_settings(engine, knobs):
  """Rules, the fused cache write, no cache, token editing; ragged prompts
  whose answers start in different blocks (1-9 tokens, greedy: against one
  ragged `block.generate` batch)."""
  sc = dataclasses.replace(engine.default_sampling, **knobs)
  texts = ['', 'ab', 'abcd', 'longer text']  # 1, 3, 5, 12 tokens with BOS.
  reqs = [Request(t, sc, seed=i) for i, t in enumerate(texts)]
  got = support.step_rows(engine, list(zip((0, 1, 1, 3), reqs)))
  ids = [engine.encode(t) for t in texts]
  if sc.temperature == 0:
    padded = np.zeros((len(ids), 12), np.int32)
    for i, x in enumerate(ids):
      padded[i, :len(x)] = x
    ref = block.generate(engine.params, padded, jax.random.key(0), config=engine.config,
                         sampling=sc, prompt_lengths=[len(x) for x in ids])
    want = [np.asarray(ref.tokens[i, :int(ref.lengths[i])]) for i in range(len(ids))]
  else:
    want = []
    for i, x in enumerate(ids):
      out = block.generate(engine.params, x[None], jax.random.key(i),
                           config=engine.config, sampling=sc)
      want.append(np.asarray(out.tokens[0, :int(out.lengths[0])]))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g.tokens, w)


@pytest.mark.slow
def test_launch_serve_answers_a_block_checkpoint(eos_block_workdir, at_once):
  """`python -m launch.serve` over the checkpoint: the same answers."""
  proc, url = support.start_server([
      f'--workdir={eos_block_workdir}', '--max_batch=4', '--batch_sizes=4',
      '--prompt_buckets=16', '--warmup=8', '--max_tokens=12'])
  try:
    for (prompt, seed, length), want in zip(ROWS, at_once):
      r = httpx.post(url + '/v1/completions', json={'prompt': prompt, 'seed': seed},
                     timeout=120)
      assert r.json()['choices'][0]['text'] == want.text
      assert r.json()['usage']['completion_tokens'] == length - (length < 12)
  finally:
    proc.kill()
    proc.wait()


def test_a_failing_worker_answers_a_one_line_json_500_and_keeps_serving(engine, monkeypatch):
  """A block call that raises (say, out of memory) fails its rows with a JSON
  500 (a stream ends with an error event), and the next request is answered."""
  from fastapi.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import stepper  # pylint: disable=g-import-not-at-top
  app = server_lib.create_app(engine, Batcher(engine, max_batch=4),
                              server_lib.Limits(max_tokens=12))
  prompt, seed, _ = ROWS[1]
  with TestClient(app, raise_server_exceptions=False) as client:
    with monkeypatch.context() as m:
      def boom(self, *args):
        raise RuntimeError('device out of memory\nallocator trace ...')
      m.setattr(stepper.RowBatch, 'step', boom)
      r = post(client, prompt=prompt, seed=seed)
      assert r.status_code == 500, r.text
      assert r.json()['error']['message'] == (
          'internal error: RuntimeError: device out of memory.')
      events = post(client, prompt=prompt, seed=seed, stream=True).text
      assert '"type": "server_error"' in events.strip().splitlines()[-1], events
    assert post(client, prompt=prompt, seed=seed).status_code == 200
    with monkeypatch.context() as m:  # A program that fails to compile (off the loop).
      m.setattr(stepper, '_build_step', lambda *args: lambda: boom(None))
      r = post(client, prompt=prompt, seed=seed, temperature=0.0, min_tokens=2)
      assert r.status_code == 500 and 'out of memory' in r.text, r.text
    assert post(client, prompt=prompt, seed=seed).status_code == 200
    for method in ('fit', 'completion'):  # Repacking, or reading an answer out.
      with monkeypatch.context() as m:
        m.setattr(stepper.RowBatch, method, boom)
        r = post(client, prompt=prompt, seed=seed)
        assert r.status_code == 500 and 'out of memory' in r.text, (method, r.text)
      assert post(client, prompt=prompt, seed=seed).status_code == 200, method
