"""An OpenAI-compatible HTTP API over an `Engine` (FastAPI; run by launch.serve).

  POST /v1/completions        {"prompt": "...", "max_tokens": 16, ...}
  POST /v1/chat/completions   {"messages": [{"role": "user", "content": "..."}]}
  GET  /v1/models, GET /health

Diffusion settings ride along as extra request fields (`steps`, `block_length`,
`parallel`, `threshold`, `factor`, `cache`, `remasking`, `cfg_scale`;
`temperature` and `seed` are OpenAI's own). A block-diffusion checkpoint is
served by the block sampler: `steps` count per block, `block_length` is the
trained block size, `threshold_rule`, `min_tokens` and `editing_threshold` are
its own, and `cache`, `remasking`, `cfg_scale` do not apply (400); its rows
end at the block where they produced EOS. With `"stream": true` the answer
comes as server-sent events, one per block as the worker commits it (the last
one with the finish reason), then `data: [DONE]`; text that could still change
(a stop sequence split across blocks, a character split across tokens) waits
for the next block. A client that leaves frees its row at the next block
boundary; so does a row whose text reached a `stop` sequence (its answer ends
there).

Bad input is HTTP 400 with a one-line `error.message`; a full queue is 429; a
request that waits past `timeout_s` is 504.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid
from typing import Literal

import fastapi
import numpy as np
import pydantic
from fastapi import responses

from dllm_jax.sampling import block
from dllm_jax.serving.batcher import Batcher, Job, QueueFull
from dllm_jax.serving.engine import (MAX_SEED, Completion, Engine, Request, Sampling,
                                     not_a_setting)


class _Fields(pydantic.BaseModel):
  """The fields both endpoints accept; anything else is an error."""
  model_config = pydantic.ConfigDict(extra='forbid')
  model: str | None = None
  max_tokens: int | None = None
  temperature: float | None = None
  seed: int | None = None
  stream: bool = False
  stop: str | list[str] | None = None
  n: int = 1
  user: str | None = None
  # Diffusion settings.
  steps: int | None = None
  block_length: int | None = None
  parallel: Literal['fixed', 'threshold', 'factor'] | None = None
  threshold: float | None = None
  factor: float | None = None
  cache: Literal['none', 'prefix', 'dual'] | None = None
  remasking: Literal['low_confidence', 'random'] | None = None
  cfg_scale: float | None = None
  # The block sampler's own (block-diffusion checkpoints).
  threshold_rule: Literal['llada2', 'dinfer'] | None = None
  min_tokens: int | None = None
  editing_threshold: float | None = None
  minimal_topk: int | None = None
  eos_early_stop: bool | None = None


class CompletionBody(_Fields):
  prompt: str | list[int]


class Message(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  role: str
  content: str


class ChatBody(_Fields):
  messages: list[Message] = pydantic.Field(min_length=1)


class BadRequest(Exception):
  """A request the server refuses: (status, one-line message)."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _error(status: int, message: str, kind: str = 'invalid_request_error'):
  return responses.JSONResponse(
      {'error': {'message': message, 'type': kind, 'code': status}}, status_code=status)


def _one_line(exc: pydantic.ValidationError | fastapi.exceptions.RequestValidationError) -> str:
  e = exc.errors()[0]
  where = '.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'
  if e.get('type') == 'json_invalid':
    return f'malformed JSON: {e.get("ctx", {}).get("error", e.get("msg"))}.'
  if e.get('type') == 'extra_forbidden':
    return f'unknown field {where!r}.'
  return f'{where}: {e.get("msg")}.'


@dataclasses.dataclass(frozen=True)
class Limits:
  """Server limits (flags of launch.serve)."""
  max_tokens: int = 256
  timeout_s: float = 300.0
  # Denoising steps a request may ask for: each is a model call, so a huge
  # count would hold the worker (and every other request) for hours.
  max_steps: int = 1024


# Sampler settings taken as request fields: by both samplers, by one of them.
_BOTH = ('steps', 'block_length')
_FULL_KNOBS = ('temperature', 'parallel', 'threshold', 'factor', 'cache', 'remasking',
               'cfg_scale')
_BLOCK_KNOBS = ('temperature', 'parallel', 'threshold', 'factor', 'threshold_rule',
                'min_tokens', 'editing_threshold', 'minimal_topk', 'eos_early_stop')


def sampling_of(body: _Fields, engine: Engine, limits: Limits) -> Sampling:
  """The request's sampler knobs: its fields over the engine's defaults."""
  g = engine.default_sampling.gen_length if body.max_tokens is None else body.max_tokens
  if not 0 < g <= limits.max_tokens:
    raise BadRequest(400, f'max_tokens must be in [1, {limits.max_tokens}], got {g}.')
  if body.steps is not None and not 0 < body.steps <= limits.max_steps:
    raise BadRequest(400, f'steps must be in [1, {limits.max_steps}], got {body.steps}.')
  if body.block_length is not None and body.block_length <= 0:
    raise BadRequest(400, f'block_length must be positive, got {body.block_length}.')
  blocks = isinstance(engine.default_sampling, block.BlockSamplingConfig)
  served = _BLOCK_KNOBS if blocks else _FULL_KNOBS
  knobs = {k: getattr(body, k) for k in _FULL_KNOBS + _BLOCK_KNOBS}
  wrong = [k for k, v in knobs.items() if v is not None and k not in served]
  if wrong:
    raise BadRequest(400, not_a_setting(wrong[0], blocks, served + _BOTH))
  try:
    return engine.sampling_for(g, body.block_length, body.steps, **knobs)
  except ValueError as e:
    raise BadRequest(400, str(e)) from None


def make_request(body: _Fields, ids: np.ndarray, engine: Engine,
                 limits: Limits) -> Request:
  """A checked engine request, or BadRequest(400, why)."""
  if body.model is not None and body.model != engine.name:
    raise BadRequest(400, f'unknown model {body.model!r}; this server has '
                     f'{engine.name!r}.')
  if body.n != 1:
    raise BadRequest(400, f'n must be 1, got {body.n}.')
  sampling = sampling_of(body, engine, limits)
  seed = secrets.randbelow(MAX_SEED + 1) if body.seed is None else body.seed
  try:
    engine.check(ids, sampling, seed)
  except ValueError as e:
    raise BadRequest(400, str(e)) from None
  return Request(ids, sampling, seed=seed)


def _stops(stop: str | list[str] | None) -> list[str]:
  return [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]


def _hold(stop: str | list[str] | None) -> int:
  """Characters at the end of a text that could still start a stop sequence."""
  return max((len(s) for s in _stops(stop)), default=1) - 1


def apply_stop(text: str, stop: str | list[str] | None) -> tuple[str, bool]:
  """Text up to the first stop sequence, and whether one was found."""
  cut = min((i for i in (text.find(s) for s in _stops(stop)) if i >= 0), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


def stopped_at(text: str, stop: str | list[str] | None) -> int | None:
  """Where the answer ends if `text` is the start of its final text: the first
  stop sequence's index, once no longer stop sequence could still start before
  it (one that the rest of the answer would complete); else None. A trailing
  replacement character (maybe half a character) does not count."""
  text = text.rstrip('\ufffd')
  cut, found = apply_stop(text, stop)
  return len(cut) if found and len(cut) + _hold(stop) <= len(text) else None


def tokens_of(tokenizer, tokens: np.ndarray, text: str) -> int:
  """How many of the answer's `tokens` [G] come before the stop sequence that
  cut it to `text`: the completion tokens usage counts. The first prefix
  whose decoded text starts with `text`, and the tokens after it that still
  decode to `text` alone (the rest of a split character: b'\\xe2' and
  b'\\xe2\\x82' both decode to U+FFFD). Encoding the cut text again would
  count differently (U+FFFD comes back as three bytes)."""
  decode = lambda k: tokenizer.decode(tokens[:k])
  lo, hi = 0, len(tokens)
  while lo < hi:  # Decoded prefixes grow with the tokens: bisect.
    mid = (lo + hi) // 2
    if decode(mid).startswith(text):
      hi = mid
    else:
      lo = mid + 1
  while lo < len(tokens) and decode(lo + 1) == text:
    lo += 1
  return lo


class StreamText:
  """The text a stream may send so far: `push(tokens)` after a block (the
  answer tokens up to its end) gives the new text that can no longer change,
  `finish(text)` the rest of the final text."""

  def __init__(self, tokenizer, stop: str | list[str] | None):
    self.tokenizer, self.stop, self.sent = tokenizer, stop, ''
    self.hold = _hold(stop)
    self.stopped = False

  def push(self, tokens: np.ndarray) -> str:
    if self.stopped:
      return ''
    # A trailing replacement character may be the head of a split character.
    text = self.tokenizer.decode(tokens).rstrip('\ufffd')
    cut = stopped_at(text, self.stop)
    self.stopped = cut is not None
    end = cut if self.stopped else len(text) - self.hold
    if not text.startswith(self.sent) or end <= len(self.sent):
      return ''
    piece, self.sent = text[len(self.sent):end], text[:end]
    return piece

  def finish(self, final: str) -> str:
    return final[len(self.sent):]


def failure(exc: BaseException) -> str:
  """A one-line message for a failure of the server itself (HTTP 500)."""
  first = str(exc).strip().splitlines()
  return f'internal error: {type(exc).__name__}' + (f': {first[0]}' if first else '') + '.'


async def _until_disconnect(request: fastapi.Request) -> None:
  while (await request.receive())['type'] != 'http.disconnect':
    pass


async def _result(job: Job, request: fastapi.Request, limits: Limits) -> Completion | None:
  """The request's completion; None if the client left (its job is cancelled:
  a queued request never runs, a running row is freed); BadRequest(504) past
  the timeout."""
  answer = asyncio.wrap_future(job.future)
  gone = asyncio.ensure_future(_until_disconnect(request))
  try:
    await asyncio.wait({answer, gone}, timeout=limits.timeout_s,
                       return_when=asyncio.FIRST_COMPLETED)
  finally:
    gone.cancel()
  if answer.done():
    return answer.result()
  job.cancel()
  if gone.done() and not gone.cancelled():
    return None
  raise BadRequest(504, f'no answer within {limits.timeout_s:g} s; retry later.')


def create_app(engine: Engine, batcher: Batcher, limits: Limits,
               warmup=None) -> fastapi.FastAPI:
  """The FastAPI app; its lifespan starts the batcher (after `warmup()`, if
  given) and, at shutdown, lets it finish every accepted request."""
  import contextlib  # pylint: disable=g-import-not-at-top

  @contextlib.asynccontextmanager
  async def lifespan(_):
    if warmup is not None:
      await asyncio.to_thread(warmup)
    batcher.start()
    yield
    await asyncio.to_thread(batcher.stop)

  app = fastapi.FastAPI(title='dllm_jax', lifespan=lifespan)

  @app.exception_handler(fastapi.exceptions.RequestValidationError)
  async def invalid(_, exc):
    return _error(400, _one_line(exc))

  @app.exception_handler(BadRequest)
  async def refused(_, exc: BadRequest):
    return _error(exc.status, str(exc), 'invalid_request_error' if exc.status < 500
                  else 'timeout')

  @app.exception_handler(QueueFull)
  async def full(_, exc: QueueFull):
    return _error(429, str(exc), 'rate_limit_exceeded')

  @app.exception_handler(Exception)
  async def failed(_, exc: Exception):  # The worker's own failure, not the request's.
    return _error(500, failure(exc), 'server_error')

  @app.get('/health')
  async def health():
    return {'status': 'ok', 'model': engine.name, 'queued': batcher.queued,
            'running': batcher.running, 'batches': batcher.batches,
            'joined': batcher.joined, 'cancelled': batcher.cancelled,
            'stopped': batcher.stopped,
            'block_calls': batcher.block_calls, 'row_blocks': batcher.row_blocks,
            'compiled': engine.num_compiled, 'dropped_programs': engine.programs.dropped}

  @app.get('/v1/models')
  async def models():
    return {'object': 'list', 'data': [{'id': engine.name, 'object': 'model',
                                        'created': 0, 'owned_by': 'dllm_jax'}]}

  @app.post('/v1/completions')
  async def completions(body: CompletionBody, request: fastapi.Request):
    ids = engine.encode(body.prompt, chat=False)
    return await _answer(engine, batcher, limits, body, ids, request, chat=False)

  @app.post('/v1/chat/completions')
  async def chat_completions(body: ChatBody, request: fastapi.Request):
    ids = engine.encode_chat([m.model_dump() for m in body.messages])
    return await _answer(engine, batcher, limits, body, ids, request, chat=True)

  return app


async def _answer(engine: Engine, batcher: Batcher, limits: Limits, body: _Fields,
                  ids: np.ndarray, request: fastapi.Request, chat: bool):
  """Queues the request and answers it: JSON, or events when streaming."""
  req = make_request(body, ids, engine, limits)
  head = {'id': f'{"chatcmpl" if chat else "cmpl"}-{uuid.uuid4().hex[:24]}',
          'created': int(time.time()), 'model': engine.name, 'seed': req.seed}
  # A row whose text reached a stop sequence ends at that block.
  stop_check = None if not _stops(body.stop) else (
      lambda tokens: stopped_at(engine.tokenizer.decode(tokens), body.stop) is not None)
  if body.stream:
    loop, blocks = asyncio.get_running_loop(), asyncio.Queue()
    put = lambda item: loop.call_soon_threadsafe(blocks.put_nowait, item)
    job = batcher.submit(req, on_block=put, stop_check=stop_check)
    job.future.add_done_callback(lambda _: put(None))  # After the last block's.
    text = StreamText(engine.tokenizer, body.stop)
    return _Stream(_events(head, job, blocks, text, limits, chat), job)
  done = await _result(batcher.submit(req, stop_check=stop_check), request, limits)
  if done is None:
    return responses.Response(status_code=499)
  text, stopped = apply_stop(done.text, body.stop)
  reason = 'stop' if stopped else done.finish_reason
  ends = np.isin(done.tokens, (engine.tokenizer.eos_id, engine.tokenizer.eot_id))
  n_answer = (tokens_of(engine.tokenizer, done.tokens, text) if stopped else
              int(np.argmax(ends)) if ends.any() else len(done.tokens))
  usage = {'prompt_tokens': len(ids), 'completion_tokens': n_answer,
           'total_tokens': len(ids) + n_answer, 'nfe': done.nfe,
           'decision_forwards': done.decisions, 'forwards': done.forwards}
  choice = ({'index': 0, 'message': {'role': 'assistant', 'content': text},
             'finish_reason': reason} if chat else
            {'index': 0, 'text': text, 'finish_reason': reason, 'logprobs': None})
  return {**head, 'object': 'chat.completion' if chat else 'text_completion',
          'choices': [choice], 'usage': usage}


def _event(head: dict, piece: str, reason: str | None, first: bool, chat: bool) -> str:
  if chat:
    delta = {'content': piece, **({'role': 'assistant'} if first else {})}
    choice = {'index': 0, 'delta': delta, 'finish_reason': reason}
  else:
    choice = {'index': 0, 'text': piece, 'logprobs': None, 'finish_reason': reason}
  kind = 'chat.completion.chunk' if chat else 'text_completion'
  return f'data: {json.dumps({**head, "object": kind, "choices": [choice]})}\n\n'


async def _events(head: dict, job: Job, blocks: asyncio.Queue, text: StreamText,
                  limits: Limits, chat: bool):
  """Server-sent events: one per block as it is committed (`blocks` gets the
  answer tokens so far after each, then None when the job ends), the last with
  the finish reason."""
  deadline = time.monotonic() + limits.timeout_s
  sent = 0
  try:
    while (tokens := await asyncio.wait_for(
        blocks.get(), max(0.0, deadline - time.monotonic()))) is not None:
      yield _event(head, text.push(tokens), None, sent == 0, chat)
      sent += 1
  except asyncio.TimeoutError:
    message = f'no answer within {limits.timeout_s:g} s; retry later.'
    yield f'data: {json.dumps({"error": {"message": message, "type": "timeout"}})}\n\n'
    return
  try:
    done = job.future.result()
  except Exception as e:  # pylint: disable=broad-except
    yield f'data: {json.dumps({"error": {"message": failure(e), "type": "server_error"}})}\n\n'
    return
  final, stopped = apply_stop(done.text, text.stop)
  reason = 'stop' if stopped else done.finish_reason
  yield _event(head, text.finish(final), reason, sent == 0, chat)
  yield 'data: [DONE]\n\n'


class _Stream(responses.StreamingResponse):
  """Events of a job that is cancelled however the response ends (done: no
  effect; the client left, or the stream was cancelled: its row is freed)."""

  def __init__(self, content, job: Job):
    super().__init__(content, media_type='text/event-stream')
    self.job = job

  async def __call__(self, scope, receive, send):
    try:
      await super().__call__(scope, receive, send)
    finally:
      self.job.cancel()
