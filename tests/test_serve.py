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

# Settings no other test uses: a request with them compiles first (seconds, on
# the compile thread), which holds it queued while a test does something else.
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


def wait_compiling(url):
  """Until the server compiles a program (off its loop)."""
  for _ in range(400):
    if httpx.get(url + '/health').json()['compiling']:
      return
    time.sleep(0.01)
  raise AssertionError('the server never started compiling the slow request')


def test_models_health_completion_and_chat(server, client):
  url = server[1]
  health = httpx.get(url + '/health').json()
  assert health['status'] == 'ok' and health['compiled'] == 2  # The step, a re-pack.
  server[0].log.seek(0)  # Printed once the port accepted.
  assert f'serving {health["model"]} on {url}' in server[0].log.read()
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


# Bad input: (method, path, body (JSON, or raw text / bytes), status, what the
# one-line error.message says). The same table is in docs/serving.md.
BAD_INPUT = [
    ('POST', '/v1/completions', '{"prompt": "x",', 400, 'malformed JSON'),
    ('POST', '/v1/completions', b'{"prompt": "\xff"}', 400, 'not UTF-8'),
    ('POST', '/v1/completions', '[' * 100000, 400, 'nested too deeply'),
    ('POST', '/v1/completions', '[1, 2]', 400, 'must be a JSON object'),
    ('POST', '/v1/completions', '{"prompt": "x", "temperature": NaN}', 400,
     'NaN is not a number JSON allows'),
    ('POST', '/v1/completions', '{"prompt": "x", "factor": Infinity}', 400,
     'Infinity is not a number JSON allows'),
    ('POST', '/v1/completions', '{"prompt": "x", "cfg_scale": 1e999}', 400,
     'cfg_scale: Input should be a finite number'),
    ('POST', '/v1/completions', {'prompt': 'x', 'top_k': 3}, 400, "unknown field 'top_k'"),
    ('POST', '/v1/completions', {'prompt': 'x', 'max_tokens': '16'}, 400,
     'max_tokens: Input should be a valid integer'),
    ('POST', '/v1/completions', {'prompt': 'x', 'max_tokens': 8.0}, 400,
     'max_tokens: Input should be a valid integer'),
    ('POST', '/v1/completions', {'prompt': 'x', 'stream': 'yes'}, 400,
     'stream: Input should be a valid boolean'),
    ('POST', '/v1/completions', {'prompt': 'x', 'temperature': '0.5'}, 400,
     'temperature: Input should be a valid number'),
    ('POST', '/v1/completions', {'prompt': '\ud800'}, 400, 'lone surrogate'),
    ('POST', '/v1/completions', {'prompt': [1, 2**40]}, 400,
     'prompt.1: Input should be less than or equal to 2147483647'),
    ('POST', '/v1/completions', {'prompt': [1, 300]}, 400, 'prompt ids must be in [0, 264)'),
    ('POST', '/v1/completions', {'prompt': 'x' * 60}, 400, 'exceeds the model max_len 64'),
    ('POST', '/v1/completions', {'prompt': 'x', 'max_tokens': 17}, 400,
     'max_tokens must be in [1, 16]'),
    ('POST', '/v1/completions', {'prompt': 'x', 'block_length': 0}, 400,
     'block_length must be in [1, 64]'),
    ('POST', '/v1/completions', {'prompt': 'x', 'temperature': -0.1}, 400,
     'temperature must be >= 0'),
    ('POST', '/v1/completions', {'prompt': 'x', 'seed': -1}, 400,
     'seed: Input should be greater than or equal to 0'),
    ('POST', '/v1/completions', {'prompt': 'x', 'steps': 10**9}, 400,
     'steps must be in [1, 1024]'),
    ('POST', '/v1/completions', {'prompt': 'x', 'model': 'gpt-4'}, 400,
     "unknown model 'gpt-4'"),
    ('POST', '/v1/completions', {'prompt': 'x', 'n': 9}, 400, 'n must be in [1, 8]'),
    ('POST', '/v1/completions', {'prompt': 'x', 'top_p': 0.5}, 400,
     'top_p=0.5 is not supported by this diffusion server (only 1)'),
    ('POST', '/v1/completions', {'prompt': 'x', 'presence_penalty': 0.3}, 400,
     'presence_penalty=0.3 is not supported'),
    ('POST', '/v1/completions', {'prompt': 'x', 'logprobs': 3}, 400,
     'logprobs=3 is not supported'),
    ('POST', '/v1/completions', {'prompt': 'x', 'editing_threshold': 0.5}, 400,
     'editing_threshold is not a setting of the full-sequence sampler'),
    ('POST', '/v1/chat/completions', {'messages': [{'role': 'wizard', 'content': 'hi'}]},
     400, "messages.0.role: Input should be 'system', 'user' or 'assistant'"),
    ('POST', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': '\udfff'}]},
     400, 'lone surrogate'),
    ('POST', '/v1/chat/completions', {'messages': []}, 400, 'at least 1 item'),
    ('GET', '/v1/completions', None, 405, 'method GET is not allowed on /v1/completions'),
    ('DELETE', '/health', None, 405, 'method DELETE is not allowed'),
    ('POST', '/v1/nothing', {}, 404, 'no route POST /v1/nothing'),
]


def test_bad_input_table_answers_4xx_in_the_openai_shape_on_one_connection(server):
  """Each row of `BAD_INPUT` on one keep-alive connection: its status, the
  OpenAI error object with a one-line message, the connection kept (never
  reset), no traceback in the server's log; neutral values of fields common
  clients send are accepted, and the server keeps serving."""
  proc, url = server
  with httpx.Client(base_url=url, timeout=30) as http:
    for method, path, body, status, reason in BAD_INPUT:
      body = json.dumps(body) if isinstance(body, dict) else body  # "\ud800" escaped.
      kw = {} if body is None else {'content': body,
                                    'headers': {'content-type': 'application/json'}}
      r = http.request(method, path, **kw)
      assert r.status_code == status, (body, r.text)
      error = r.json()['error']
      assert reason in error['message'] and '\n' not in error['message'], (body, error)
      assert error['type'] == 'invalid_request_error' and error['code'] == status
    neutral = {'prompt': 'ok', 'seed': 1, 'top_p': 1, 'presence_penalty': 0,
               'frequency_penalty': 0, 'user': 'u', 'logprobs': None, 'echo': False,
               'best_of': 1}
    r = http.post('/v1/completions', json=neutral)
    assert r.status_code == 200, r.text
    assert r.json()['choices'][0]['text'] == complete(url, prompt='ok', seed=1)
  proc.log.seek(0)
  assert 'Traceback' not in proc.log.read()


def test_n_rows_are_one_batch_with_seeds_seed_plus_i(server, client):
  """n=3: three choices, row i equal to the request with seed + i alone."""
  url = server[1]
  alone = [complete(url, prompt='rows', seed=7 + i) for i in range(3)]
  out = client.completions.create(model=client.models.list().data[0].id, prompt='rows',
                                  seed=7, n=3, top_p=1, presence_penalty=0, user='me')
  assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == alone
  with httpx.stream('POST', url + '/v1/completions', timeout=60,
                    json={'prompt': 'rows', 'seed': 7, 'n': 3, 'stream': True}) as r:
    events = [e for _, e in data_events(r)]
  texts = ['' for _ in alone]
  for e in events:
    texts[e['choices'][0]['index']] += e['choices'][0]['text']
  assert texts == alone


def test_max_tokens_round_up_to_a_bucket_and_the_answer_is_cut(server):
  """max_tokens 1..8 (blocks of 4) run as 1 or 2 blocks: two programs; each
  answer is the prefix of the bucket's answer."""
  url = server[1]
  full = httpx.post(url + '/v1/completions', timeout=60,
                    json={'prompt': [1, 2], 'seed': 3, 'max_tokens': 8}).json()
  before = health(url)['compiles']
  for k in range(5, 8):
    r = httpx.post(url + '/v1/completions', timeout=60,
                   json={'prompt': [1, 2], 'seed': 3, 'max_tokens': k}).json()
    assert r['usage']['completion_tokens'] <= k
    assert full['choices'][0]['text'].startswith(r['choices'][0]['text'])
  assert health(url)['compiles'] == before  # Every k in 5..8 runs 8 tokens.


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
def test_prefix_and_dual_cache_requests_step(server):
  """Both caches step block by block (the prefix cache with a program per
  block index): one event per block, equal to the non-streamed answer."""
  url = server[1]
  for cache, blocks in (('prefix', 2), ('dual', 2)):
    body = {'prompt': 'cache', 'seed': 9, 'cache': cache, 'max_tokens': 8,
            'block_length': 4}
    plain = complete(url, **body)
    with httpx.stream('POST', url + '/v1/completions', timeout=120,
                      json={**body, 'stream': True}) as r:
      events = [e for _, e in data_events(r)]
    assert len(events) == blocks
    assert ''.join(e['choices'][0]['text'] for e in events) == plain


@pytest.fixture
def slow_compile_server(random_workdir):
  """The module's server, but each program compiled off the loop takes 5 s
  more (a large model's compile): what the test below checks happens while one
  compiles, on any machine speed."""
  proc, url = support.start_server([
      f'--workdir={random_workdir}', '--max_batch=8', '--batch_sizes=8',
      '--max_queue=64', '--prompt_buckets=32', '--warmup=32', '--max_tokens=16',
      '--batch_window_ms=20'], env={'DLLM_SERVE_COMPILE_DELAY_S': '5'})
  yield proc, url
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_leaving_client_full_queue_and_sigterm(slow_compile_server):
  """While the programs of new settings compile (off the worker's loop: their
  requests wait queued): a streaming client that gives up frees its place; a
  flood finds the queue full (429, never a hang); SIGTERM then answers every
  accepted request and exits 0."""
  proc, url = slow_compile_server
  pool = concurrent.futures.ThreadPoolExecutor(80)
  post = lambda body: httpx.post(url + '/v1/completions', json=body, timeout=120)
  slow = pool.submit(post, {'prompt': 'slow', **SLOW})
  wait_compiling(url)
  with pytest.raises(httpx.ReadTimeout):
    with httpx.stream('POST', url + '/v1/completions', timeout=0.5,
                      json={'prompt': 'gone', 'stream': True, **SLOW}) as r:
      r.read()
  for _ in range(100):
    if httpx.get(url + '/health').json()['queued'] == 1:
      break
    time.sleep(0.02)
  assert httpx.get(url + '/health').json()['queued'] == 1  # The slow one.
  flood = [pool.submit(post, {'prompt': 'q', 'seed': i, **SLOW}) for i in range(72)]
  for _ in range(500):  # Until all are queued or refused.
    refused = sum(f.done() and f.result().status_code == 429 for f in flood)
    if refused + httpx.get(url + '/health').json()['queued'] == 73:
      break
    time.sleep(0.02)
  assert httpx.get(url + '/health').json()['compiling'] == 1  # Still compiling.
  proc.send_signal(signal.SIGTERM)
  codes = [f.result().status_code for f in flood]
  assert codes.count(429) == 72 - 63 and codes.count(200) == 63, codes
  assert slow.result().status_code == 200
  assert proc.wait(60) == 0
  proc.log.seek(0)
  assert 'Traceback' not in proc.log.read()
  pool.shutdown()
