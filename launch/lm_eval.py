r"""The lm-evaluation-harness command line with the `dllm_jax` model registered.

  python -m launch.lm_eval --model dllm_jax \
      --model_args workdir=/tmp/dllm,mc_num=128,cfg_scale=0.5 \
      --tasks arc_challenge --num_fewshot 0 --batch_size 8

Every `lm_eval` flag works (`--include_path` for local task YAML, `--limit`,
`--output_path`, `--log_samples`, ...). An installed dllm_jax (`pip install .`
or `pip install -e .`) makes the plain `lm_eval --model dllm_jax ...` work
(`dllm_jax_lm_eval_hook`). This module, and its console script `dllm-lm-eval`
kept for existing scripts, is the same command; it also works in a source
checkout that is not installed.
"""


def main() -> None:
  import dllm_jax.serving.harness  # pylint: disable=g-import-not-at-top,unused-import
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  cli_evaluate()


if __name__ == '__main__':
  main()
