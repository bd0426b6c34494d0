"""Stop sequences in answer text: where an answer ends, the tokens before it,
and the text a stream may send so far (`StreamText`)."""

from __future__ import annotations

import numpy as np


def stops(stop: str | list[str] | None) -> list[str]:
  return [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]


def _hold(stop: str | list[str] | None) -> int:
  """Characters at the end of a text that could still start a stop sequence."""
  return max((len(s) for s in stops(stop)), default=1) - 1


def apply_stop(text: str, stop: str | list[str] | None) -> tuple[str, bool]:
  """Text up to the first stop sequence, and whether one was found."""
  cut = min((i for i in (text.find(s) for s in stops(stop)) if i >= 0), default=-1)
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
