r"""The lm-evaluation-harness command line with the `dllm_jax` model registered.

  python -m launch.lm_eval --model dllm_jax \
      --model_args workdir=/tmp/dllm,mc_num=128,cfg_scale=0.5 \
      --tasks arc_challenge --num_fewshot 0 --batch_size 8

Every `lm_eval` flag works (`--include_path` for local task YAML, `--limit`,
`--output_path`, `--log_samples`, ...). This module and its console script
`dllm-lm-eval` are the documented command: lm-eval 0.4.13 finds models only in
its own registry, so the model must be imported first, which this does (also in
a source checkout that is not installed). An installed dllm_jax also declares
the model in lm-eval's plugin entry-point group `lm_eval.models`, so an lm-eval
release that reads that group runs the plain `lm_eval --model dllm_jax ...`.
"""


def main() -> None:
  import dllm_jax.evaluation.harness  # pylint: disable=g-import-not-at-top,unused-import
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  cli_evaluate()


if __name__ == '__main__':
  main()
