r"""The lm-evaluation-harness command line with the `dllm_jax` model registered.

  python -m launch.lm_eval --model dllm_jax \
      --model_args workdir=/tmp/dllm,mc_num=128,cfg_scale=0.5 \
      --tasks arc_challenge --num_fewshot 0 --batch_size 8
  dllm-lm-eval ...   # the same (console script of `pip install dllm_jax[eval]`)

Every `lm_eval` flag works (`--include_path` for local task YAML, `--limit`,
`--output_path`, `--log_samples`, ...). lm-eval 0.4 finds models only in its
own registry (no plugin entry points), so plain `lm_eval --model dllm_jax`
works only where `dllm_jax.serving.harness` was imported first (as here, or
in Python before `lm_eval.simple_evaluate`).
"""


def main() -> None:
  import dllm_jax.serving.harness  # pylint: disable=g-import-not-at-top,unused-import
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  cli_evaluate()


if __name__ == '__main__':
  main()
