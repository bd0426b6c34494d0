"""Shared launcher plumbing: config flags and flag errors in one line."""

import contextlib
import logging as py_logging
import os
import re
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags


def _override_error(e: Exception, argv: list[str]) -> str:
  text = ' '.join(str(e).replace('\\n', ' ').split())
  keys = [a[len('--config.'):].split('=')[0] for a in argv[1:]
          if a.startswith('--config.')]
  hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  # The name ml_collections did not find: after "instead of", else the first
  # quoted word (a key that has no close match).
  missing = hint.group(2) if hint else next(iter(re.findall(r"'(\w+)", text)), None)
  bad = next((k for k in keys if missing in k.split('.')), None) if missing else None
  if bad is not None and isinstance(e, (AttributeError, KeyError)):
    parts = bad.split('.')
    where = '.'.join(parts[:parts.index(missing) + 1])
    fix = '.'.join(parts[:parts.index(missing)] + [hint.group(1)]) if hint else ''
    suggestion = f' (did you mean {fix!r}?)' if hint else ''
    if where != bad:
      return f'error: unknown config section {where!r} in --config.{bad}{suggestion}.'
    return f'error: unknown config key {bad!r}{suggestion}.'
  return f'error: bad config override ({", ".join(keys)}): {text}'


def _load_error(e: BaseException) -> str:
  """A config file that does not load (a syntax error, an exception in
  get_config), in one line naming the file and line."""
  if isinstance(e, SyntaxError):
    return (f'error: cannot load --config: {e.filename}, line {e.lineno}: '
            f'{e.msg}: {(e.text or "").strip()}')
  tb = e.__traceback__
  where = ''
  while tb is not None:  # The innermost frame: the config file's line.
    where = f'{tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno}: '
    tb = tb.tb_next
  detail = ' '.join(str(e).split())
  return f'error: cannot load --config: {where}{type(e).__name__}: {detail}'


def define_config(default_path: str):
  """`--config` (an ml_collections file, locked) with `--config.KEY=VALUE`.

  ml_collections checks overrides in `sys.argv` when the flag is defined; an
  unknown key or a badly typed value ends the program there with one line.
  """
  try:
    return config_flags.DEFINE_config_file(
        'config', default_path,
        'Config file (ml_collections); override keys with --config.KEY=VALUE.',
        lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(_override_error(e, sys.argv))
  except Exception as e:  # pylint: disable=broad-except  (the file's own errors)
    sys.exit(_load_error(e))


def parse_flags(argv: list[str]) -> list[str]:
  """Flag parser for `app.run(main, flags_parser=parse_flags)`: one-line errors."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(_override_error(e, argv))
  except Exception as e:  # pylint: disable=broad-except  (the config file's own errors)
    sys.exit(_load_error(e))


def check_flag(holder: flags.FlagHolder, ok, allowed: str) -> None:
  """A flag validator: a value for which `ok(value)` is false ends the program at
  flag parsing, before any work, with `error: flag --NAME=VALUE: must be
  ALLOWED`. An unset optional flag (None) passes."""
  flags.register_validator(holder, lambda v: v is None or ok(v),
                           message=f'must be {allowed}')


def check_divides(divisor: flags.FlagHolder, dividend: flags.FlagHolder) -> None:
  """`dividend` must be a multiple of `divisor` when both are set (and positive)."""
  def ok(values):
    a, b = values[divisor.name], values[dividend.name]
    return a is None or b is None or a <= 0 or b % a == 0
  flags.register_multi_flags_validator(
      [divisor, dividend], ok,
      message=f'--{dividend.name} must be a multiple of --{divisor.name}')


def config_value(config_flag):
  """The parsed config; a config file that failed to load ends in one line."""
  try:
    value = config_flag.value
    value.to_dict()  # A failed load surfaces on first access.
    return value
  except OSError as e:
    detail = ' '.join(str(e).split())
    sys.exit(f'error: cannot load --config: {detail}')


class _QuietBackgroundErrors(py_logging.Filter):
  """Drops the error logs of Orbax's and asyncio's background threads: a failed
  save logs a traceback per array there (hundreds of lines on a full disk); the
  checkpoint manager reports it in one line instead (training/save_guard.py)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno < py_logging.ERROR:
      return True
    background = (record.name == 'asyncio' or
                  f'{os.sep}orbax{os.sep}' in (record.pathname or ''))
    return not background


_QUIET = _QuietBackgroundErrors()


def _quiet_closed_loops() -> None:
  """TensorStore's callbacks into an event loop Orbax already closed (after a
  failed save) print `RuntimeError: Event loop is closed` tracebacks through
  sys.excepthook / threading.excepthook: only those are dropped (installed
  once per process)."""
  if getattr(sys.excepthook, 'quiets_closed_loops', False):
    return

  def closed(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed'
  hook, thread_hook = sys.excepthook, threading.excepthook

  def excepthook(t, e, tb):
    if not closed(e):
      hook(t, e, tb)
  excepthook.quiets_closed_loops = True
  sys.excepthook = excepthook
  threading.excepthook = lambda a: None if closed(a.exc_value) else thread_hook(a)


def start(argv: list[str]) -> None:
  """The common start of a launcher's main: no stray arguments, and absl logging
  at WARNING unless --verbosity is given (Orbax logs every save at INFO; the
  error logs of its background threads are dropped too: see
  `_QuietBackgroundErrors`)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    for handler in py_logging.getLogger().handlers:
      handler.addFilter(_QUIET)  # A no-op where it is already there.
    _quiet_closed_loops()


@contextlib.contextmanager
def one_line_errors():
  """Bad input (ValueError, a missing file, dllm_jax's own errors) ends the
  program with `error: ...` instead of a traceback."""
  from dllm_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    yield
  except errors.CheckpointSaveError as e:
    # Orbax's threads of a failed save may wait for each other forever, and
    # Python's exit would wait for them: leave at once (every `finally`, the
    # workdir lock's release included, has run).
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # pylint: disable=protected-access
  except (ValueError, FileNotFoundError, errors.DllmError) as e:
    sys.exit(f'error: {e}')
