"""Evaluation: log-likelihoods of answers, and the lm-evaluation-harness model.

  nll, greedy = likelihood.log_likelihood(params, prompt, answer, key, config=config)

`likelihood.py` is the masked-diffusion ELBO (LLaDA's Monte Carlo estimate),
`block_likelihood.py` its block-diffusion twin, and `harness.py` the model that
lm-eval loads (`dllm_jax`, registered through lm-eval's entry point); import
`harness` on its own, as it needs lm-eval and the serving engine.
"""

from dllm_jax.evaluation import block_likelihood, likelihood
