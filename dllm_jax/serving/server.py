"""An OpenAI-compatible HTTP API over an `Engine` (FastAPI; run by launch.serve).

  POST /v1/completions        {"prompt": "...", "max_tokens": 16, ...}
  POST /v1/chat/completions   {"messages": [{"role": "user", "content": "..."}]}
  GET  /v1/models, GET /health

Diffusion settings ride along as extra request fields (`steps`, `block_length`,
`parallel`, `threshold`, `factor`, `cache`, `remasking`, `cfg_scale`;
`temperature` and `seed` are OpenAI's own); the model's sampler names the
ones it takes (`SamplerProgram.request_knobs`; another is a 400). A
block-diffusion checkpoint is served by the block sampler: `steps` count per
block, `block_length` is the trained block size, `threshold_rule`,
`min_tokens`, `editing_threshold`, `minimal_topk` and `eos_early_stop` are its
own; its rows end at the block where they produced EOS.

`max_tokens` rounds up to a length bucket (`Engine.gen_bucket`: a power of
two of whole blocks) and the answer is cut to it, so a model meets a few
compiled programs; `n` > 1 (at most `api.MAX_N`) runs n rows of one batch,
seeds seed, seed + 1, .... With `"stream": true` the answer comes as
server-sent events, one per block as the worker commits it (the last one with
the finish reason), then `data: [DONE]`; text that could still change (a stop
sequence split across blocks, a character split across tokens) waits for the
next block. A client that leaves frees its row at the next block boundary; so
does a row whose text reached a `stop` sequence (its answer ends there).

Every refusal of a request is a 4xx in the OpenAI error shape with a one-line
`error.message` (`api.py` checks the body: types, finite numbers, valid
Unicode, int32, roles; unknown routes 404, wrong methods 405); a full queue
is 429; a request that waits past `timeout_s` is 504; a failure of the server
itself is a 500 in the same shape. `/health` answers 503 until the warm-up
compiled its programs, then 200.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import threading
import time
import uuid

import fastapi
import numpy as np
from fastapi import responses
from starlette.exceptions import HTTPException

from dllm_jax.serving import api, sampler
from dllm_jax.serving.api import BadRequest
from dllm_jax.serving.batcher import Batcher, Job, QueueFull
from dllm_jax.serving.engine import Engine
from dllm_jax.serving.records import Completion, Request
# The stop-sequence text helpers live in stop_text.py (re-exported here).
from dllm_jax.serving.stop_text import (StreamText, apply_stop, stopped_at, stops,
                                        tokens_of)

log = logging.getLogger('dllm_jax.serving')


@dataclasses.dataclass(frozen=True)
class Limits:
  """Server limits (flags of launch.serve)."""
  max_tokens: int = 256
  timeout_s: float = 300.0
  # Denoising steps a request may ask for: each is a model call, so a huge
  # count would hold the worker (and every other request) for hours.
  max_steps: int = 1024


def sampling_of(body: api.Fields, engine: Engine, limits: Limits, n: int,
                exact: bool = False):
  """The request's sampler settings for an n-token prompt: its fields over the
  engine's defaults, gen_length its max_tokens' bucket (`exact`: the fewest
  whole blocks), and the tokens it asked for."""
  g = engine.default_sampling.gen_length if body.tokens is None else body.tokens
  if not 0 < g <= limits.max_tokens:
    raise BadRequest(400, f'max_tokens must be in [1, {limits.max_tokens}], got {g}.')
  if body.steps is not None and not 0 < body.steps <= limits.max_steps:
    raise BadRequest(400, f'steps must be in [1, {limits.max_steps}], got {body.steps}.')
  if body.block_length is not None and not 0 < body.block_length <= engine.config.max_len:
    raise BadRequest(400, f'block_length must be in [1, {engine.config.max_len}], got '
                     f'{body.block_length}.')
  program = engine.sampler()
  known = set(program.request_knobs) | {'steps', 'block_length'}
  knobs = {k: getattr(body, k) for k in KNOBS}
  wrong = [k for k, v in knobs.items() if v is not None and k not in known]
  if wrong:
    raise BadRequest(400, sampler.not_a_setting(wrong[0], program, known))
  knobs = {k: v for k, v in knobs.items() if k in program.request_knobs}
  bl = body.block_length or program.block_length(engine.default_sampling)
  bucket = (-(-g // bl) * bl if exact else
            engine.gen_bucket(g, body.block_length, n, limit=limits.max_tokens))
  try:
    return engine.sampling_for(bucket, body.block_length, body.steps, asked=g,
                               **knobs), g
  except ValueError as e:
    raise BadRequest(400, str(e)) from None


# The sampler settings a request may carry (each sampler takes some).
KNOBS = ('temperature', 'parallel', 'threshold', 'factor', 'cache', 'remasking',
         'cfg_scale', 'threshold_rule', 'min_tokens', 'editing_threshold',
         'minimal_topk', 'eos_early_stop')


def make_request(body: api.Fields, ids: np.ndarray, engine: Engine,
                 limits: Limits) -> Request:
  """A checked engine request (row 0 of n), or BadRequest(400, why)."""
  if body.model is not None and body.model != engine.name:
    raise BadRequest(400, f'unknown model {body.model!r}; this server has '
                     f'{engine.name!r}.')
  if not 1 <= body.n <= api.MAX_N:
    raise BadRequest(400, f'n must be in [1, {api.MAX_N}], got {body.n}.')
  seed = secrets.randbelow(2**32 - body.n + 1) if body.seed is None else body.seed
  if seed + body.n - 1 > 2**32 - 1:
    raise BadRequest(400, f'seed + n - 1 must be at most {2**32 - 1}, got '
                     f'{seed + body.n - 1}.')
  sampling, g = sampling_of(body, engine, limits, len(ids))
  try:
    engine.check(ids, sampling, seed)
  except ValueError:  # The bucket may not fit where whole blocks do.
    sampling, g = sampling_of(body, engine, limits, len(ids), exact=True)
    try:
      engine.check(ids, sampling, seed)
    except ValueError as exact:
      raise BadRequest(400, str(exact)) from None
  return Request(ids, sampling, seed=seed, max_tokens=g)


def failure(exc: BaseException) -> str:
  """A one-line message for a failure of the server itself (HTTP 500)."""
  first = str(exc).strip().splitlines()
  return f'internal error: {type(exc).__name__}' + (f': {first[0]}' if first else '') + '.'


async def _until_disconnect(request: fastapi.Request) -> None:
  while (await request.receive())['type'] != 'http.disconnect':
    pass


async def _results(jobs: list[Job], request: fastapi.Request,
                   limits: Limits) -> list[Completion] | None:
  """The jobs' completions; None if the client left (the jobs are cancelled:
  a queued request never runs, a running row is freed); BadRequest(504) past
  the timeout. A failed job raises its error."""
  answers = asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs))
  gone = asyncio.ensure_future(_until_disconnect(request))
  try:
    await asyncio.wait({answers, gone}, timeout=limits.timeout_s,
                       return_when=asyncio.FIRST_COMPLETED)
  finally:
    gone.cancel()
  if answers.done():
    return answers.result()
  for job in jobs:
    job.cancel()
  answers.cancel()
  if gone.done() and not gone.cancelled():
    return None
  raise BadRequest(504, f'no answer within {limits.timeout_s:g} s; retry later.')


def _lifespan(batcher: Batcher, warmup, ready: threading.Event):
  """Starts the batcher and `warmup()` (if given) on a thread, which sets
  `ready` once it returned; at shutdown lets the batcher finish every
  accepted request."""
  import contextlib  # pylint: disable=g-import-not-at-top

  def warm():
    try:
      warmup()
    except Exception as e:  # pylint: disable=broad-except
      log.warning('warm-up failed (programs compile on first use): %s', failure(e))
    ready.set()

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.start()
    if warmup is None:
      ready.set()
    else:
      threading.Thread(target=warm, name='warmup', daemon=True).start()
    yield
    await asyncio.to_thread(batcher.stop)
  return lifespan


def _add_error_handlers(app: fastapi.FastAPI) -> None:
  """Every refusal in the OpenAI error shape, FastAPI's own 404 / 405 / body
  errors included."""

  @app.exception_handler(HTTPException)
  async def http_error(request: fastapi.Request, exc: HTTPException):
    if exc.status_code == 404:
      message = (f'no route {request.method} {request.url.path}; routes: POST '
                 '/v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health.')
    elif exc.status_code == 405:
      message = f'method {request.method} is not allowed on {request.url.path}.'
    else:
      message = str(exc.detail)
    return api.error_response(exc.status_code, message)

  @app.exception_handler(fastapi.exceptions.RequestValidationError)
  async def invalid(_, exc):  # Routes parse their own bodies (`api.parse`).
    return api.error_response(400, api.one_line(exc))

  @app.exception_handler(BadRequest)
  async def refused(_, exc: BadRequest):
    return api.error_response(exc.status, str(exc),
                              'timeout' if exc.status == 504 else None)

  @app.exception_handler(QueueFull)
  async def full(_, exc: QueueFull):
    return api.error_response(429, str(exc), 'rate_limit_exceeded')


def _health_counts(engine: Engine, batcher: Batcher) -> dict:
  """/health's counters."""
  return {'model': engine.name, 'queued': batcher.queued,
          'running': batcher.running, 'batches': batcher.batches,
          'joined': batcher.joined, 'cancelled': batcher.cancelled,
          'stopped': batcher.stopped, 'block_calls': batcher.block_calls,
          'row_blocks': batcher.row_blocks, 'compiled': engine.num_compiled,
          'compiles': engine.programs.compiles,
          'compiling': len(batcher.compiling),
          'dropped_programs': engine.programs.dropped}


def create_app(engine: Engine, batcher: Batcher, limits: Limits,
               warmup=None) -> fastapi.FastAPI:
  """The FastAPI app; its lifespan starts the batcher and `warmup()` (if
  given) on a thread: `/health` says ready (200) once that returned (503
  before); at shutdown it lets the batcher finish every accepted request."""
  ready = threading.Event()
  app = fastapi.FastAPI(title='dllm_jax', lifespan=_lifespan(batcher, warmup, ready))
  _add_error_handlers(app)

  @app.get('/health')
  async def health():
    counts = _health_counts(engine, batcher)
    if not ready.is_set():
      return responses.JSONResponse({'status': 'warming_up', **counts}, status_code=503)
    return {'status': 'ok', **counts}

  @app.get('/v1/models')
  async def models():
    return {'object': 'list', 'data': [{'id': engine.name, 'object': 'model',
                                        'created': 0, 'owned_by': 'dllm_jax'}]}

  @app.post('/v1/completions')
  async def completions(request: fastapi.Request):
    body = api.parse(await request.body(), api.CompletionBody)
    return await _guarded(engine, batcher, limits, body, request, chat=False)

  @app.post('/v1/chat/completions')
  async def chat_completions(request: fastapi.Request):
    body = api.parse(await request.body(), api.ChatBody)
    return await _guarded(engine, batcher, limits, body, request, chat=True)

  return app


async def _guarded(engine, batcher, limits, body, request, chat: bool):
  """The answer; a failure of the server itself as a one-line JSON 500 (its
  traceback logged once), never an exception out of the app (which would
  reset the client's connection)."""
  try:
    if chat:
      ids = engine.encode_chat([m.model_dump(exclude_none=True) for m in body.messages])
    else:
      ids = engine.encode(body.prompt, chat=False)
    return await _answer(engine, batcher, limits, body, ids, request, chat)
  except (BadRequest, QueueFull):
    raise
  except Exception as e:  # pylint: disable=broad-except
    log.error('request failed: %s', failure(e))
    return api.error_response(500, failure(e), 'server_error')


def _submit(batcher: Batcher, req: Request, n: int, **kw) -> list[Job]:
  """n jobs (seeds seed .. seed + n - 1); all queued or none (QueueFull)."""
  jobs = []
  try:
    for i in range(n):
      jobs.append(batcher.submit(dataclasses.replace(req, seed=req.seed + i),
                                 **{k: (v(i) if k == 'on_block' else v)
                                    for k, v in kw.items()}))
  except QueueFull:
    for job in jobs:
      job.cancel()
    raise
  return jobs


async def _answer(engine: Engine, batcher: Batcher, limits: Limits, body: api.Fields,
                  ids: np.ndarray, request: fastapi.Request, chat: bool):
  """Queues the request's rows and answers them: JSON, or events when
  streaming."""
  req = make_request(body, ids, engine, limits)
  head = {'id': f'{"chatcmpl" if chat else "cmpl"}-{uuid.uuid4().hex[:24]}',
          'created': int(time.time()), 'model': engine.name, 'seed': req.seed}
  # A row whose text reached a stop sequence ends at that block.
  stop_check = None if not stops(body.stop) else (
      lambda tokens: stopped_at(engine.tokenizer.decode(tokens), body.stop) is not None)
  if body.stream:
    loop, blocks = asyncio.get_running_loop(), asyncio.Queue()
    put = lambda item: loop.call_soon_threadsafe(blocks.put_nowait, item)
    jobs = _submit(batcher, req, body.n, stop_check=stop_check,
                   on_block=lambda i: (lambda tokens: put((i, tokens))))
    for i, job in enumerate(jobs):  # After the row's last block.
      job.future.add_done_callback(lambda _, i=i: put((i, None)))
    texts = [StreamText(engine.tokenizer, body.stop) for _ in jobs]
    return _Stream(_events(head, jobs, blocks, texts, limits, chat), jobs)
  jobs = _submit(batcher, req, body.n, stop_check=stop_check)
  done = await _results(jobs, request, limits)
  if done is None:
    return responses.Response(status_code=499)
  choices, n_answer = [], 0
  for i, d in enumerate(done):
    text, stopped = apply_stop(d.text, body.stop)
    reason = 'stop' if stopped else d.finish_reason
    ends = np.isin(d.tokens, (engine.tokenizer.eos_id, engine.tokenizer.eot_id))
    n_answer += (tokens_of(engine.tokenizer, d.tokens, text) if stopped else
                 int(np.argmax(ends)) if ends.any() else len(d.tokens))
    choices.append({'index': i, 'message': {'role': 'assistant', 'content': text},
                    'finish_reason': reason} if chat else
                   {'index': i, 'text': text, 'finish_reason': reason, 'logprobs': None})
  usage = {'prompt_tokens': len(ids), 'completion_tokens': n_answer,
           'total_tokens': len(ids) + n_answer, 'nfe': sum(d.nfe for d in done),
           'decision_forwards': sum(d.decisions for d in done),
           'forwards': sum(d.forwards for d in done)}
  return {**head, 'object': 'chat.completion' if chat else 'text_completion',
          'choices': choices, 'usage': usage}


def _event(head: dict, index: int, piece: str, reason: str | None, first: bool,
           chat: bool) -> str:
  if chat:
    delta = {'content': piece, **({'role': 'assistant'} if first else {})}
    choice = {'index': index, 'delta': delta, 'finish_reason': reason}
  else:
    choice = {'index': index, 'text': piece, 'logprobs': None, 'finish_reason': reason}
  kind = 'chat.completion.chunk' if chat else 'text_completion'
  return f'data: {json.dumps({**head, "object": kind, "choices": [choice]})}\n\n'


async def _events(head: dict, jobs: list[Job], blocks: asyncio.Queue,
                  texts: list[StreamText], limits: Limits, chat: bool):
  """Server-sent events: one per row and block as it is committed (`blocks`
  gets (row, answer tokens so far) after each, then (row, None) when the
  row's job ends), the row's last with its finish reason."""
  deadline = time.monotonic() + limits.timeout_s
  sent, left = [0] * len(jobs), len(jobs)
  while left:
    try:
      i, tokens = await asyncio.wait_for(blocks.get(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
      message = f'no answer within {limits.timeout_s:g} s; retry later.'
      yield f'data: {json.dumps({"error": {"message": message, "type": "timeout"}})}\n\n'
      return
    if tokens is not None:
      yield _event(head, i, texts[i].push(tokens), None, sent[i] == 0, chat)
      sent[i] += 1
      continue
    left -= 1
    try:
      done = jobs[i].future.result()
    except Exception as e:  # pylint: disable=broad-except
      error = {'message': failure(e), 'type': 'server_error'}
      yield f'data: {json.dumps({"error": error})}\n\n'
      return
    final, stopped = apply_stop(done.text, texts[i].stop)
    reason = 'stop' if stopped else done.finish_reason
    yield _event(head, i, texts[i].finish(final), reason, sent[i] == 0, chat)
  yield 'data: [DONE]\n\n'


class _Stream(responses.StreamingResponse):
  """Events of jobs that are cancelled however the response ends (done: no
  effect; the client left, or the stream was cancelled: their rows are freed)."""

  def __init__(self, content, jobs: list[Job]):
    super().__init__(content, media_type='text/event-stream')
    self.jobs = jobs

  async def __call__(self, scope, receive, send):
    try:
      await super().__call__(scope, receive, send)
    finally:
      for job in self.jobs:
        job.cancel()
