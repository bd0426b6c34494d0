r"""An OpenAI-compatible server over a checkpoint (see dllm_jax/serving/server.py).

  python -m launch.serve --workdir=/tmp/dllm --port=8000
  python -m launch.serve --hf_dir=/path/to/LLaDA-8B-Instruct --dtype=bfloat16
  python -m launch.serve --hf_dir=/tmp/dllm_hf      # A launch.export directory.
  curl localhost:8000/v1/completions -H 'Content-Type: application/json' \
      -d '{"prompt": "def ", "max_tokens": 64, "steps": 32, "seed": 1}'

Requests arriving together run as one batch of up to --max_batch rows (see
--batch_window_ms, --batch_max_wait_ms), stepped block by block: requests that
arrive later join at the next block boundary, finished rows leave. More than
--max_queue waiting answers 429; a request not answered within --timeout_s
answers 504. SIGTERM (or Ctrl-C) stops accepting, answers every accepted
request, then exits 0. The "serving ... on" line prints once the port
accepts; /health answers 503 until the --warmup (and --warmup_tokens)
programs are compiled, then 200. A request's max_tokens runs its length
bucket (a power of two of whole blocks; the answer is cut), and a program
still missing compiles on a compile thread while other requests are served.

A checkpoint trained with train.objective=block_diffusion is served by the block
sampler (sampling/block.py) with its trained block size: --steps then counts
steps per block (default: the block size), and a row leaves its batch at the
end of the block where it produced EOS.
"""

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.')
_HF_DIR = flags.DEFINE_string('hf_dir', None, 'Local Hugging Face directory (LLaDA, '
                              'LLaDA-MoE, LLaDA2, or a launch.export output).')
_DTYPE = flags.DEFINE_string('dtype', None, 'Compute dtype override (bfloat16, ...).')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on.')
_PORT = flags.DEFINE_integer('port', 8000, 'Port to listen on.')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 32, 'Most requests in one batch.')
_BATCH_SIZES = flags.DEFINE_list(
    'batch_sizes', None, 'Compiled batch sizes (a batch is padded up to the next); '
    'default: powers of two up to --max_batch.')
_PROMPT_BUCKETS = flags.DEFINE_list(
    'prompt_buckets', None, 'Compiled prompt lengths (a prompt is left-padded up to '
    'the next); default: 16, 32, 64, ... up to the model length.')
_MAX_COMPILED = flags.DEFINE_integer(
    'max_compiled', 256, 'Most compiled programs kept (past that the least recently '
    'used is dropped and compiles again when asked for; keep it above what a warm '
    'server steps through: a step and re-packs per batch size and prompt bucket).')
_MAX_QUEUE = flags.DEFINE_integer('max_queue', 256, 'Most waiting requests (then 429).')
_WINDOW_MS = flags.DEFINE_float('batch_window_ms', 20.0,
                                'A batch closes when no request came for this long.')
_MAX_WAIT_MS = flags.DEFINE_float(
    'batch_max_wait_ms', None, 'Longest a first request waits for others while '
    'they keep arriving (default: 10 x --batch_window_ms).')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', None, 'Default max_tokens (default: '
                                   "the run's sample settings).")
_STEPS = flags.DEFINE_integer('steps', None, 'Default denoising steps (per block for '
                              'a block-diffusion checkpoint).')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', None, 'Default block length.')
_TEMPERATURE = flags.DEFINE_float('temperature', None, 'Default temperature.')
_TIMEOUT_S = flags.DEFINE_float('timeout_s', 300.0, 'Request timeout (then 504).')
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', 256, 'Largest max_tokens accepted.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 1024, 'Largest steps a request may ask '
                                  'for (each is a model call; more answers 400).')
_WARMUP = flags.DEFINE_list(
    'warmup', ['32'], 'Prompt lengths to compile ahead at the default settings, '
    'for every batch size (empty: compile on first use). /health answers 503 '
    'until these are compiled.')
_WARMUP_TOKENS = flags.DEFINE_list(
    'warmup_tokens', [], 'max_tokens to compile ahead too (each rounded up to its '
    'length bucket: a power of two of whole blocks); "all": every bucket up to '
    '--max_tokens. Default: the default max_tokens alone.')


def main(argv):
  cli.start(argv)
  import uvicorn  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import batcher as batcher_lib  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import server  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving.engine import Engine  # pylint: disable=g-import-not-at-top

  with cli.one_line_errors():
    if bool(_WORKDIR.value) == bool(_HF_DIR.value):
      raise ValueError('give exactly one of --workdir and --hf_dir.')
    opts = dict(dtype=_DTYPE.value, max_batch=_MAX_BATCH.value,
                max_compiled=_MAX_COMPILED.value)
    if _BATCH_SIZES.value:
      opts['batch_sizes'] = [int(b) for b in _BATCH_SIZES.value]
    if _PROMPT_BUCKETS.value:
      opts['prompt_buckets'] = [int(n) for n in _PROMPT_BUCKETS.value]
    engine = (Engine.from_workdir(_WORKDIR.value, **opts) if _WORKDIR.value else
              Engine.from_hf_dir(_HF_DIR.value, **opts))
    engine.default_sampling = engine.sampling_for(
        _GEN_LENGTH.value, _BLOCK_LENGTH.value, _STEPS.value,
        temperature=_TEMPERATURE.value)
    limits = server.Limits(max_tokens=min(_MAX_TOKENS.value, engine.config.max_len),
                           timeout_s=_TIMEOUT_S.value, max_steps=_MAX_STEPS.value)
    batcher = batcher_lib.Batcher(engine, max_batch=_MAX_BATCH.value,
                                  max_queue=_MAX_QUEUE.value,
                                  window_s=_WINDOW_MS.value / 1e3,
                                  max_wait_s=(None if _MAX_WAIT_MS.value is None
                                              else _MAX_WAIT_MS.value / 1e3))
    lengths = [int(n) for n in _WARMUP.value]
    default = engine.default_sampling.gen_length
    settings = [engine.sampling_for(g, asked=default) for g in sorted(
        {engine.gen_bucket(default, None, 0, limits.max_tokens),
         *warm_buckets(engine, limits.max_tokens)})]
    warmup = lambda: engine.warmup([(s, n, b) for s in settings for n in lengths
                                    for b in engine.batch_sizes], stepped=True)
    api = server.create_app(engine, batcher, limits, warmup=warmup if lengths else None)
  url = f'http://{_HOST.value}:{_PORT.value}'
  _server_class(f'serving {engine.name} on {url} (ready when {url}/health answers 200)')(
      uvicorn.Config(api, host=_HOST.value, port=_PORT.value, log_level='warning',
                     timeout_graceful_shutdown=_TIMEOUT_S.value)).run()


def warm_buckets(engine, max_tokens: int) -> list[int]:
  """The generated lengths --warmup_tokens names, as their buckets."""
  values = _WARMUP_TOKENS.value
  block = engine.sampler().block_length(engine.default_sampling)
  if values == ['all']:
    values, g = [], block
    while g <= max_tokens:
      values.append(g)
      g *= 2
  return sorted({engine.gen_bucket(int(t), None, 0, max_tokens) for t in values})


def _server_class(line: str):
  import uvicorn  # pylint: disable=g-import-not-at-top

  class Server(uvicorn.Server):
    """Prints `line` once the port accepts. uvicorn re-raises a caught SIGTERM
    after its graceful shutdown (the exit status then says 'killed'); a
    requested stop that drained cleanly exits 0."""

    async def startup(self, sockets=None):
      await super().startup(sockets=sockets)
      if self.started:
        print(line, flush=True)

    def handle_exit(self, sig, frame):
      super().handle_exit(sig, frame)
      getattr(self, '_captured_signals', []).clear()

  return Server


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
