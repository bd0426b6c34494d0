"""launch.serve as a real subprocess on 127.0.0.1, over a random-weight tiny
checkpoint: the OpenAI client and plain HTTP, bad input, load, a full queue,
a client that leaves, SIGTERM. One server for the module (its last test stops it)."""

import concurrent.futures
import json
import signal
import time

import httpx
import numpy as np
import pytest

from tests import support

openai = pytest.importorskip('openai')

# Settings no other test uses: a request with them compiles first (seconds),
# which holds the worker busy while a test does something else.
SLOW = {'temperature': 0.5, 'steps': 8}


@pytest.fixture(scope='module')
def server(random_workdir):
  proc, url = support.start_server([
      f'--workdir={random_workdir}', '--max_batch=8', '--batch_sizes=8',
      '--max_queue=64', '--prompt_buckets=32', '--warmup=32', '--max_tokens=16', '--batch_window_ms=20'])
  yield proc, url
  if proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope='module')
def client(server):
  return openai.OpenAI(base_url=server[1] + '/v1', api_key='none', max_retries=0)


def complete(url, **body):
  r = httpx.post(url + '/v1/completions', json=body, timeout=120)
  assert r.status_code == 200, r.text
  return r.json()['choices'][0]['text']


def wait_busy(url):
  """Until the worker is computing a batch."""
  for _ in range(400):
    if httpx.get(url + '/health').json()['running']:
      return
    time.sleep(0.01)
  raise AssertionError('the worker never started the slow request')


def test_models_health_completion_and_chat(server, client):
  url = server[1]
  health = httpx.get(url + '/health').json()
  assert health['status'] == 'ok' and health['compiled'] == 2  # The step, a re-pack.
  name = client.models.list().data[0].id
  out = client.completions.create(model=name, prompt='hello', seed=3)
  assert out.choices[0].finish_reason in ('stop', 'length')
  assert out.usage.prompt_tokens == 6  # BOS + 5 bytes.
  again = client.completions.create(model=name, prompt='hello', seed=3)
  assert again.choices[0].text == out.choices[0].text  # Same seed, same answer.
  client.completions.create(model=name, prompt='hello', seed=3, temperature=0.9)
  compiled = httpx.get(url + '/health').json()['compiled']
  client.completions.create(model=name, prompt='hello', seed=3, temperature=1.3)
  assert httpx.get(url + '/health').json()['compiled'] == compiled  # Traced per row.
  chat = client.chat.completions.create(
      model=name, messages=[{'role': 'user', 'content': 'hi'}], seed=4,
      extra_body={'steps': 4, 'block_length': 4})
  assert chat.choices[0].message.role == 'assistant'
  assert isinstance(chat.choices[0].message.content, str)


def test_streaming_sends_one_event_per_block(server, client):
  url = server[1]
  whole = complete(url, prompt='abc', seed=5)
  with httpx.stream('POST', url + '/v1/completions', timeout=60,
                    json={'prompt': 'abc', 'seed': 5, 'stream': True}) as r:
    lines = [l for l in r.iter_lines() if l.startswith('data: ')]
  assert lines[-1] == 'data: [DONE]'
  events = [json.loads(l[len('data: '):]) for l in lines[:-1]]
  assert len(events) == 2  # 8 tokens in blocks of 4.
  assert ''.join(e['choices'][0]['text'] for e in events) == whole
  assert events[-1]['choices'][0]['finish_reason'] is not None
  name = client.models.list().data[0].id
  chat = dict(model=name, messages=[{'role': 'user', 'content': 'hi'}], seed=4)
  stream = client.chat.completions.create(**chat, stream=True)
  text = ''.join(c.choices[0].delta.content or '' for c in stream)
  plain = client.chat.completions.create(**chat)
  assert text == plain.choices[0].message.content


def test_stream_text_waits_for_what_could_still_change():
  """A character split across blocks, and a stop sequence that may be
  starting, wait for the next block; the pieces add up to the final text."""
  from dllm_jax import ByteTokenizer
  from dllm_jax.serving.server import StreamText, apply_stop
  stream, answer = StreamText(ByteTokenizer(), stop='XY'), list('abéXYz'.encode())
  pieces = [stream.push(answer[:end]) for end in (3, 5, 6)]
  assert pieces == ['a', 'bé', '']  # b'ab\xc3' -> 'a'; 'abéX' holds 'X' back.
  final, stopped = apply_stop(ByteTokenizer().decode(answer), 'XY')
  assert stopped and ''.join(pieces) + stream.finish(final) == final == 'abé'


def test_a_stop_ends_the_answer_once_no_longer_stop_could_start_before_it():
  """What the batcher ends a row at (`Job.stop_check`) and streams stop at."""
  from dllm_jax.serving.server import stopped_at
  assert stopped_at('abXc', 'X') == 2
  assert stopped_at('abXc', ['X', 'bXcde']) is None  # 'bXcde' may yet come at 1.
  assert stopped_at('abXcdefg', ['X', 'bXcde']) == 1
  assert stopped_at('ab\ufffd', ['b', 'c']) == 1 and stopped_at('abc', None) is None


def test_usage_after_a_stop_counts_the_tokens_of_the_cut_answer():
  from dllm_jax import ByteTokenizer
  from dllm_jax.serving.server import apply_stop, tokens_of
  tok = ByteTokenizer()
  answer = np.array([*b'a\xffb', *'é'.encode(), *b'XYz', tok.eos_id])
  text, _ = apply_stop(tok.decode(answer), 'XY')
  assert text == 'a\ufffdbé' and len(tok.encode(text)) == 7  # Re-encoded: U+FFFD is 3.
  assert tokens_of(tok, answer, text) == 5
  assert tokens_of(tok, answer, '') == 0 and tokens_of(tok, answer, 'a\ufffdb') == 3
  split = np.array([*b'a\xe2\x82X', tok.eos_id])  # A cut character before the stop.
  assert tokens_of(tok, split, apply_stop(tok.decode(split), 'X')[0]) == 3


@pytest.mark.parametrize('body, reason', [
    ('{"prompt": "x",', 'malformed JSON'),
    ({'prompt': 'x', 'top_k': 3}, "unknown field 'top_k'"),
    ({'prompt': 'x' * 60}, 'exceeds the model max_len 64'),
    ({'prompt': 'x', 'max_tokens': 17}, 'max_tokens must be in [1, 16]'),
    ({'prompt': 'x', 'max_tokens': 8, 'block_length': 3}, 'not divisible by block_length'),
    ({'prompt': 'x', 'temperature': -0.1}, 'temperature must be >= 0'),
    ({'prompt': 'x', 'seed': -1}, 'seed must be in'),
    ({'prompt': 'x', 'steps': 10**9}, 'steps must be in [1, 1024]'),
    ({'prompt': 'x', 'model': 'gpt-4'}, "unknown model 'gpt-4'"),
])
def test_bad_input_is_400_with_one_line_and_server_keeps_serving(server, body, reason):
  url = server[1]
  r = (httpx.post(url + '/v1/completions', content=body, timeout=30,
                  headers={'content-type': 'application/json'}) if isinstance(body, str)
       else httpx.post(url + '/v1/completions', json=body, timeout=30))
  assert r.status_code == 400, r.text
  message = r.json()['error']['message']
  assert reason in message and '\n' not in message, message
  assert complete(url, prompt='ok', seed=1) is not None


def test_64_concurrent_clients_get_their_own_answers(server):
  """Each answer equals the same request sent alone (same seed), whatever
  batch it shared."""
  url = server[1]
  requests = [{'prompt': f'p{i}' * (1 + i % 4), 'seed': i} for i in range(8)]
  alone = [complete(url, **r) for r in requests]
  jobs = [(c, k % len(requests)) for c in range(64) for k in (c, c + 3, c + 5)]

  def client_run(c):
    with httpx.Client(timeout=120) as http:
      out = []
      for cc, k in jobs:
        if cc == c:
          r = http.post(url + '/v1/completions', json=requests[k])
          out.append((k, r.status_code, r.json()['choices'][0]['text']))
      return out

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    results = [x for part in pool.map(client_run, range(64)) for x in part]
  assert len(results) == len(jobs) == 192
  for k, status, text in results:
    assert status == 200 and text == alone[k]
  assert httpx.get(url + '/health').json()['batches'] < 192  # Requests were batched.


# 16 blocks of one token, 64 steps each: long enough (a second or so) that a
# test acts while the request computes; one compilation shared by the tests.
LONG = {'max_tokens': 16, 'block_length': 1, 'steps': 1024}


def health(url):
  return httpx.get(url + '/health').json()


def data_events(response):
  """(arrival time, event) of each server-sent event before [DONE]."""
  for line in response.iter_lines():
    if line == 'data: [DONE]':
      return
    if line.startswith('data: '):
      yield time.monotonic(), json.loads(line[len('data: '):])


def test_stream_sends_each_block_while_the_request_computes(server):
  url = server[1]
  plain = complete(url, prompt='stream', seed=11, **LONG)  # Compiles LONG.
  before, at_first, events = health(url), None, []
  with httpx.stream('POST', url + '/v1/completions', timeout=60,
                    json={'prompt': 'stream', 'seed': 11, 'stream': True, **LONG}) as r:
    for t, e in data_events(r):
      events.append(e)
      if at_first is None:
        at_first = health(url)
  assert len(events) == 16  # One per block.
  assert ''.join(e['choices'][0]['text'] for e in events) == plain
  assert [e['choices'][0]['finish_reason'] is None for e in events] == [True] * 15 + [False]
  # The first event came while the request's later blocks were still to run.
  assert at_first['running'] == 1
  assert at_first['row_blocks'] - before['row_blocks'] < 16


def test_requests_join_a_running_batch_at_block_boundaries(server):
  """Arriving mid-batch: one with the same settings joins its rows, one with
  other settings steps beside it and is answered first; all equal alone."""
  url = server[1]
  long, same, other = ({'prompt': 'long', 'seed': 21, **LONG},
                       {'prompt': 'same settings', 'seed': 22, **LONG},
                       {'prompt': 'short', 'seed': 23})
  alone = [complete(url, **b) for b in (long, same, other)]
  timed = lambda b: (complete(url, **b), time.monotonic())
  before, parts, late = health(url), [], []
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    with httpx.stream('POST', url + '/v1/completions', timeout=60,
                      json={**long, 'stream': True}) as r:
      for t, e in data_events(r):
        parts.append(e['choices'][0]['text'])
        if len(parts) == 1:
          late = [pool.submit(timed, same), pool.submit(timed, other)]
    long_end = time.monotonic()
    (same_text, _), (other_text, other_end) = [f.result() for f in late]
  assert [''.join(parts), same_text, other_text] == alone
  assert other_end < long_end  # Answered while the long batch still ran.
  after = health(url)
  assert after['joined'] - before['joined'] >= 1  # `same` joined `long`'s rows.
  assert after['batches'] - before['batches'] == 2  # `long`'s and `other`'s.


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
  url = server[1]
  others = [{'prompt': f'other {i}', 'seed': 40 + i} for i in range(3)]
  alone = [complete(url, **b) for b in others]
  before = health(url)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    with httpx.stream('POST', url + '/v1/completions', timeout=60,
                      json={'prompt': 'leaves', 'seed': 31, 'stream': True, **LONG}) as r:
      next(data_events(r))
      answers = [pool.submit(complete, url, **b) for b in others]
    # The client is gone (its connection closed mid-stream).
    assert [f.result() for f in answers] == alone
  for _ in range(500):
    now = health(url)
    if now['cancelled'] > before['cancelled'] and now['running'] == 0:
      break
    time.sleep(0.01)
  assert now['cancelled'] == before['cancelled'] + 1 and now['running'] == 0
  assert now['row_blocks'] - before['row_blocks'] < 16 + 3 * 2  # Not all 16 blocks.


def test_a_stop_sequence_ends_the_row_at_its_block(server):
  """A stop sequence early in the answer: the stream (and a plain request)
  ends with the same text as the whole answer cut there, and the row leaves
  at the block that reached it instead of computing all 16."""
  url = server[1]
  body = {'prompt': 'stopper', 'seed': 12, **LONG}
  plain = complete(url, **body)
  # The first character after the first that occurs there first: a stop there.
  k = next(i for i, c in enumerate(plain) if i and c != '\ufffd' and plain.index(c) == i)
  before = health(url)
  with httpx.stream('POST', url + '/v1/completions', timeout=60,
                    json={**body, 'stream': True, 'stop': plain[k]}) as r:
    events = [e for _, e in data_events(r)]
  assert ''.join(e['choices'][0]['text'] for e in events) == plain[:k]
  assert events[-1]['choices'][0]['finish_reason'] == 'stop'
  r = httpx.post(url + '/v1/completions', json={**body, 'stop': [plain[k], 'never']},
                 timeout=60).json()
  assert r['choices'][0]['text'] == plain[:k]
  assert r['choices'][0]['finish_reason'] == 'stop'
  after = health(url)
  assert after['stopped'] - before['stopped'] == 2
  assert after['row_blocks'] - before['row_blocks'] < 2 * 16


@pytest.mark.slow
def test_prefix_cache_runs_whole_and_dual_cache_steps(server):
  """The prefix cache cannot step block by block: one event with the whole
  answer; the dual cache steps: one event per block. Both equal non-streamed."""
  url = server[1]
  for cache, blocks in (('prefix', 1), ('dual', 2)):
    body = {'prompt': 'cache', 'seed': 9, 'cache': cache, 'max_tokens': 8,
            'block_length': 4}
    plain = complete(url, **body)
    with httpx.stream('POST', url + '/v1/completions', timeout=120,
                      json={**body, 'stream': True}) as r:
      events = [e for _, e in data_events(r)]
    assert len(events) == blocks
    assert ''.join(e['choices'][0]['text'] for e in events) == plain


def test_leaving_client_full_queue_and_sigterm(server):
  """While the worker is busy: a streaming client that gives up frees its
  place; a flood finds the queue full (429, never a hang); SIGTERM then
  answers every accepted request and exits 0."""
  proc, url = server
  pool = concurrent.futures.ThreadPoolExecutor(80)
  post = lambda body: httpx.post(url + '/v1/completions', json=body, timeout=120)
  slow = pool.submit(post, {'prompt': 'slow', **SLOW})
  wait_busy(url)
  with pytest.raises(httpx.ReadTimeout):
    with httpx.stream('POST', url + '/v1/completions', timeout=0.5,
                      json={'prompt': 'gone', 'stream': True}) as r:
      r.read()
  for _ in range(100):
    if httpx.get(url + '/health').json()['queued'] == 0:
      break
    time.sleep(0.02)
  assert httpx.get(url + '/health').json()['queued'] == 0
  flood = [pool.submit(post, {'prompt': 'q', 'seed': i}) for i in range(72)]
  for _ in range(500):  # Until all are queued or refused.
    refused = sum(f.done() and f.result().status_code == 429 for f in flood)
    if refused + httpx.get(url + '/health').json()['queued'] == 72:
      break
    time.sleep(0.02)
  assert httpx.get(url + '/health').json()['running'] == 1  # Still the slow one.
  proc.send_signal(signal.SIGTERM)
  codes = [f.result().status_code for f in flood]
  assert codes.count(429) == 72 - 64 and codes.count(200) == 64, codes
  assert slow.result().status_code == 200
  assert proc.wait(60) == 0
  pool.shutdown()
