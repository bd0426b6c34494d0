"""The OpenAI request bodies the server accepts, checked in one place.

`parse(raw, Body)` turns a request's bytes into a checked body or raises
`BadRequest(400, one line)`: the bytes must be UTF-8 JSON (no NaN or
Infinity, nested at most as deep as the parser allows), and the fields
strictly typed (pydantic strict mode: no "16" for an int, no "yes" for a bool,
no 1.0 for an int; an int is fine for a float), every float finite, every
string free of lone surrogates, every token id and integer inside int32,
chat roles system / user / assistant. Fields that common OpenAI clients send
with a neutral value (`top_p` 1, `presence_penalty` / `frequency_penalty`
0, `logprobs` null, `echo` false, `best_of` 1, `user`) are accepted; any other
value of them is refused with the reason (`NEUTRAL`). Every refusal is
answered as the OpenAI error object by the server (`error_response`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pydantic
from fastapi import responses

INT32 = 2**31 - 1
# n: rows of one batch per request (each its own seed: seed, seed + 1, ...).
MAX_N = 8


class BadRequest(Exception):
  """A request the server refuses: (status, one-line message)."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def error_response(status: int, message: str, kind: str | None = None):
  """The OpenAI error object."""
  kind = kind or ('invalid_request_error' if status < 500 else 'server_error')
  return responses.JSONResponse(
      {'error': {'message': message, 'type': kind, 'param': None, 'code': status}},
      status_code=status)


def _text(s: str) -> str:
  try:
    s.encode('utf-8')
  except UnicodeEncodeError as e:
    raise ValueError(f'text holds a lone surrogate (\\u{ord(s[e.start]):04x}) at '
                     f'{e.start}; send valid Unicode') from None
  return s


Text = Annotated[str, pydantic.AfterValidator(_text)]
Int32 = Annotated[int, pydantic.Field(ge=-INT32 - 1, le=INT32)]
TokenId = Annotated[int, pydantic.Field(ge=0, le=INT32)]

# Fields common clients send, with the one value that means "off" here.
NEUTRAL = {'top_p': 1, 'presence_penalty': 0, 'frequency_penalty': 0, 'logprobs': None,
           'top_logprobs': None, 'echo': False, 'best_of': 1, 'logit_bias': None,
           'suffix': None, 'stream_options': None, 'parallel_tool_calls': None,
           'tools': None, 'tool_choice': None, 'response_format': None,
           'service_tier': None, 'metadata': None, 'store': None}
_ALSO_NEUTRAL = {'logprobs': (False, 0), 'logit_bias': ({},), 'tools': ([],),
                 'tool_choice': ('none',), 'response_format': ({'type': 'text'},),
                 'store': (False,), 'stream_options': ({'include_usage': False},)}


class Fields(pydantic.BaseModel):
  """The fields both endpoints accept; anything else is an error."""
  model_config = pydantic.ConfigDict(extra='forbid', strict=True, allow_inf_nan=False)
  model: Text | None = None
  max_tokens: Int32 | None = None
  max_completion_tokens: Int32 | None = None
  temperature: float | None = None
  seed: Annotated[int, pydantic.Field(ge=0, le=2**32 - 1)] | None = None
  stream: bool = False
  stop: Text | list[Text] | None = None
  n: Int32 = 1
  user: Text | None = None
  # Neutral only (`NEUTRAL`).
  top_p: float | None = None
  presence_penalty: float | None = None
  frequency_penalty: float | None = None
  logprobs: bool | Int32 | None = None
  top_logprobs: Int32 | None = None
  echo: bool | None = None
  best_of: Int32 | None = None
  logit_bias: dict[Text, float] | None = None
  suffix: Text | None = None
  stream_options: dict[Text, bool] | None = None
  parallel_tool_calls: bool | None = None
  tools: list[Any] | None = None
  tool_choice: Text | None = None
  response_format: dict[Text, Text] | None = None
  service_tier: Text | None = None
  metadata: dict[Text, Text] | None = None
  store: bool | None = None
  # Diffusion settings.
  steps: Int32 | None = None
  block_length: Int32 | None = None
  parallel: Literal['fixed', 'threshold', 'factor'] | None = None
  threshold: float | None = None
  factor: float | None = None
  cache: Literal['none', 'prefix', 'dual'] | None = None
  remasking: Literal['low_confidence', 'random'] | None = None
  cfg_scale: float | None = None
  # The block sampler's own (block-diffusion checkpoints).
  threshold_rule: Literal['llada2', 'dinfer'] | None = None
  min_tokens: Int32 | None = None
  editing_threshold: float | None = None
  minimal_topk: Int32 | None = None
  eos_early_stop: bool | None = None

  def check_neutral(self) -> None:
    """BadRequest for a field of `NEUTRAL` sent with another value."""
    for name, off in NEUTRAL.items():
      value = getattr(self, name)  # Strict types: True is no 1 here.
      if value is None or value == off or value in _ALSO_NEUTRAL.get(name, ()):
        continue
      raise BadRequest(400, f'{name}={json.dumps(value)} is not supported by this '
                       f'diffusion server (only {json.dumps(off)}' +
                       ''.join(f' or {json.dumps(v)}' for v in _ALSO_NEUTRAL.get(name, ()))
                       + ').')
    if self.max_tokens is not None and self.max_completion_tokens is not None:
      raise BadRequest(400, 'give max_tokens or max_completion_tokens, not both.')

  @property
  def tokens(self) -> int | None:
    """max_tokens (or max_completion_tokens, the chat API's new name)."""
    return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


class CompletionBody(Fields):
  prompt: Text | list[TokenId]


class Message(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid', strict=True)
  role: Literal['system', 'user', 'assistant']
  content: Text
  name: Text | None = None


class ChatBody(Fields):
  messages: list[Message] = pydantic.Field(min_length=1)


def _where(loc) -> str:
  """A field's path without pydantic's union member tags ('list[int]', ...)."""
  tag = lambda x: isinstance(x, str) and ('[' in x or x in _TAGS)
  return '.'.join(str(x) for x in loc if x != 'body' and not tag(x)) or 'body'


_TAGS = ('str', 'int', 'float', 'bool', 'list', 'dict', 'none', 'constrained-int')


def one_line(exc: pydantic.ValidationError) -> str:
  """The most specific validation error (the deepest; of a union, the member
  that got furthest) as one line: where and why."""
  e = max(exc.errors(), key=lambda e: len(_where(e.get('loc', ())).split('.')))
  where = _where(e.get('loc', ()))
  if e.get('type') == 'extra_forbidden':
    return f'unknown field {where!r}.'
  msg = str(e.get('msg', 'invalid')).removeprefix('Value error, ')
  return f'{where}: {msg}.'.replace('\n', ' ')


def _no_constant(name: str):
  raise BadRequest(400, f'malformed JSON: {name} is not a number JSON allows; send '
                   'finite numbers.')


def parse(raw: bytes, body_type: type[Fields]) -> Fields:
  """The request's checked body, or BadRequest(400, why)."""
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadRequest(400, f'the body is not UTF-8 (byte {e.start}).') from None
  try:
    obj = json.loads(text, parse_constant=_no_constant)
  except json.JSONDecodeError as e:
    raise BadRequest(400, f'malformed JSON: {e.msg} (at {e.pos}).') from None
  except RecursionError:
    raise BadRequest(400, 'malformed JSON: nested too deeply.') from None
  if not isinstance(obj, dict):
    raise BadRequest(400, f'the body must be a JSON object, got {type(obj).__name__}.')
  try:
    body = body_type.model_validate(obj)
  except pydantic.ValidationError as e:
    raise BadRequest(400, one_line(e)) from None
  except RecursionError:
    raise BadRequest(400, 'the body is nested too deeply.') from None
  body.check_neutral()
  return body
