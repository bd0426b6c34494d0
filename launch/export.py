r"""Export a training run's checkpoint as a Hugging Face directory.

  python -m launch.export --workdir=/tmp/dllm --out=/tmp/dllm_hf
  python -m launch.export --workdir=/tmp/dllm --out=/tmp/dllm_hf --dtype=bfloat16
  python -m launch.serve --hf_dir=/tmp/dllm_hf

The directory (dllm_jax/interop/export.py) holds config.json with the family's
released key names, the weights in its released layout (in the parameters' own
dtype unless --dtype asks for another), the run's tokenizer files and special
tokens, and generation_config.json with the run's sample settings: this project
(`Engine.from_hf_dir`, `launch.serve --hf_dir`, the lm-eval model's `hf_dir=`)
and the family's reference modeling code load it.
"""

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_OUT = flags.DEFINE_string('out', None, 'Directory to write (created; must be empty '
                           'if it exists).', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'],
                           "Weight dtype (default: the parameters' own).")
_SHARD_GB = flags.DEFINE_float('max_shard_gb', 5.0, 'Largest safetensors shard (GiB).')
cli.check_flag(_SHARD_GB, lambda v: v > 0, '> 0')


def main(argv):
  cli.start(argv)
  import os  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from dllm_jax.interop import export  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top

  with cli.one_line_errors():
    out = _OUT.value
    if os.path.isdir(out) and os.listdir(out):  # Before the restore.
      raise ValueError(f'--out={out} exists and is not empty.')
    cfg, params, tok = checkpoint.restore_for_inference(_WORKDIR.value, step=_STEP.value)
    meta = checkpoint.read_meta(_WORKDIR.value, _STEP.value)
    created = not os.path.exists(out)
    try:
      export.write(params, cfg, out, tokenizer=tok, sample=export.sample_settings(meta),
                   dtype=_DTYPE.value, max_shard_bytes=int(_SHARD_GB.value * 2**30))
    except OSError as e:  # EPERM, ENOSPC, a file named like --out: one line.
      if created:  # No half-written directory left behind to refuse a rerun.
        shutil.rmtree(out, ignore_errors=True)
      raise ValueError(f'cannot write the export to {out}: {e.strerror or e}.') from None
    print(f'wrote {out} ({type(cfg).family}, {len(os.listdir(out))} files)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
