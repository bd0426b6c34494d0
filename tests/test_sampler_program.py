"""A new sampler is one class and one registry entry: a toy sampler defined
here (no model: block k of a row's answer is arithmetic on its seed, prompt
and temperature) is served over HTTP by the real Engine, batcher and server
(uvicorn in this process on 127.0.0.1), block by block, with no other code."""

import dataclasses
import socket
import threading
import time

import flax.struct
import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import ByteTokenizer
from dllm_jax import models as presets
from dllm_jax.serving import Engine, sampler
from dllm_jax.serving.batcher import Batcher

CFG = presets.get_preset('tiny', d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64)


@dataclasses.dataclass(frozen=True)
class ToySettings:
  gen_length: int = 8
  block_length: int = 4
  steps: int = 1
  temperature: float = 0.0

  def program_part(self):  # The floats travel one per row (`ToyKnobs`).
    return dataclasses.replace(self, temperature=0.0)


@flax.struct.dataclass
class ToyKnobs:
  temperature: jax.Array


def toy_answer(seed: int, last: int, temperature: float, g: int) -> np.ndarray:
  """What a toy row answers: token j = (seed + last + 7 j + 10 T) % 200 + 33."""
  return (seed + last + 7 * np.arange(g) + round(10 * temperature)) % 200 + 33


class ToySampler(sampler.RowSampler):
  name = 'the toy sampler'
  request_knobs = ('temperature',)
  knobs_type = ToyKnobs

  def sampling_for(self, engine, default, gen_length, block_length, steps, knobs,
                   asked=None):
    wrong = sorted(set(knobs) - set(self.request_knobs))
    if wrong:
      raise ValueError(sampler.not_a_setting(wrong[0], self, self.request_knobs))
    return dataclasses.replace(default, gen_length=gen_length,
                               block_length=block_length or default.block_length, **knobs)

  def check(self, engine, sampling, n):
    if sampling.gen_length % sampling.block_length:
      raise ValueError('gen_length must be whole blocks.')

  def row_fns(self, engine, program, bucket):
    g, b = program.gen_length, program.block_length

    def init(params, prompt, mask, seed, knobs):
      return {'tokens': jnp.zeros(g, jnp.int32), 'nfe': jnp.int32(0)}

    def step(params, prompt, mask, seed, knobs, carry, k):
      j = jnp.arange(g)
      new = ((seed.astype(jnp.int32) + prompt[-1] + 7 * j +
              jnp.round(10 * knobs.temperature).astype(jnp.int32)) % 200 + 33)
      write = (j // b == k)
      carry = {'tokens': jnp.where(write, new, carry['tokens']),
               'nfe': carry['nfe'] + (k < g // b)}
      return carry, carry['tokens'], jnp.minimum(k + 1, g // b) * b, k + 1 >= g // b
    return init, step

  def finish(self, engine, program, bucket, carry, i, tokens, prompt_tokens):
    nfe = int(jax.device_get(carry['nfe'])[i])
    return engine.completion(tokens, np.full(len(tokens), -1, np.int32), nfe,
                             prompt_tokens)


sampler.register(ToySettings, ToySampler())


@pytest.fixture(scope='module')
def url():
  import uvicorn  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  engine = Engine({}, CFG, ByteTokenizer(), default_sampling=ToySettings(),
                  batch_sizes=(1, 2, 4), prompt_buckets=(16,), name='toy')
  app = server_lib.create_app(engine, Batcher(engine, max_batch=4),
                              server_lib.Limits(max_tokens=16))
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port,
                                         log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  base = f'http://127.0.0.1:{port}'
  for _ in range(600):
    try:
      if httpx.get(base + '/health', timeout=1).status_code == 200:
        break
    except httpx.TransportError:
      pass
    time.sleep(0.05)
  yield base
  server.should_exit = True
  thread.join(60)


def test_a_registered_toy_sampler_serves_over_http(url):
  post = lambda **b: httpx.post(url + '/v1/completions', json=b, timeout=60)
  tok = ByteTokenizer()
  r = post(prompt='hi', seed=5, max_tokens=8, temperature=0.3)
  assert r.status_code == 200, r.text
  want = toy_answer(5, ord('i'), 0.3, 8)
  assert r.json()['choices'][0]['text'] == tok.decode(want)
  assert r.json()['usage']['nfe'] == 2  # Two blocks of 4.
  # max_tokens 5 runs the 2-block bucket, cut to 5.
  r = post(prompt='hi', seed=5, max_tokens=5, temperature=0.3)
  assert r.json()['choices'][0]['text'] == tok.decode(want[:5])
  # Streaming: one event per block; n rows with seeds seed + i.
  with httpx.stream('POST', url + '/v1/completions', timeout=60,
                    json={'prompt': 'hi', 'seed': 5, 'max_tokens': 8, 'n': 2,
                          'stream': True}) as s:
    events = [l for l in s.iter_lines() if l.startswith('data: {')]
  assert len(events) == 2 * 2
  r = post(prompt='hi', seed=5, threshold=0.5)
  assert r.status_code == 400
  assert 'threshold is not a setting of the toy sampler' in r.json()['error']['message']


def test_health_is_503_until_the_warmup_returned():
  from fastapi.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  engine = Engine({}, CFG, ByteTokenizer(), default_sampling=ToySettings(),
                  batch_sizes=(1,), prompt_buckets=(16,))
  release = threading.Event()
  app = server_lib.create_app(engine, Batcher(engine, max_batch=1),
                              server_lib.Limits(max_tokens=16), warmup=release.wait)
  with TestClient(app) as client:
    r = client.get('/health')
    assert r.status_code == 503 and r.json()['status'] == 'warming_up'
    release.set()
    for _ in range(100):
      if client.get('/health').status_code == 200:
        break
      time.sleep(0.01)
    assert client.get('/health').json()['status'] == 'ok'


def test_length_buckets_are_powers_of_two_of_whole_blocks():
  assert [sampler.gen_bucket(t, 8) for t in (1, 8, 9, 17, 33, 64, 65)] == [
      8, 8, 16, 32, 64, 64, 128]
  assert sampler.gen_bucket(40, 8, room=48) == 48  # 6 blocks fit, 8 do not.
  assert sampler.gen_bucket(40, 8, room=32) == 40  # The fewest whole blocks.
  assert len({sampler.gen_bucket(t, 32) for t in range(1, 257)}) == 4
