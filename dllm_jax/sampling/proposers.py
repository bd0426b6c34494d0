"""Proposers: a step's candidate token and confidence at every block position.

A proposer is a small frozen object (its static settings) with one method,
`propose(logits, key, knobs) -> (candidates, confidence)`. The temperature is
traced (`knobs.temperature`): 0 and > 0 take the two branches of a `lax.cond`
(or one fixed branch, `noised`: the server's rows, whose per-row temperatures
under `vmap` would run both), so the 0 branch is the plain argmax and draws no
noise, exactly as with a Python 0.0, and the jax.random stream a step consumes is the one the NumPy
reference replays (`remasking.step_uniforms`). A new proposer is one class here
plus its entry in `PROPOSERS` (keyed by `SamplingConfig.noise`).
"""

from __future__ import annotations

import dataclasses

import jax

from dllm_jax.sampling import remasking


@dataclasses.dataclass(frozen=True)
class _Proposer:
  """The static settings every proposer shares (see
  `remasking.candidates_and_confidence` for their meaning)."""

  remasking: str
  mask_id: int
  eos_id: int
  eot_id: int
  logits_eos_inf: bool = False
  confidence_eos_eot_inf: bool = False
  # None: branch on the traced temperature; True / False: that branch alone
  # (a caller that knows the sign, e.g. rows under vmap whose temperatures
  # differ, where a per-row predicate would run both branches).
  noised: bool | None = None

  def _branches(self, logits: jax.Array, key: jax.Array, temperature: jax.Array,
                noise: str, **kw) -> tuple[jax.Array, jax.Array]:
    def run(noised: bool):
      return remasking.candidates_and_confidence(
          logits, key, temperature=temperature if noised else 0.0, noised=noised,
          remasking=self.remasking, mask_id=self.mask_id, eos_id=self.eos_id,
          eot_id=self.eot_id, logits_eos_inf=self.logits_eos_inf,
          confidence_eos_eot_inf=self.confidence_eos_eot_inf, noise=noise, **kw)
    if self.noised is not None:
      return run(self.noised)
    return jax.lax.cond(temperature > 0, lambda: run(True), lambda: run(False))


@dataclasses.dataclass(frozen=True)
class JaxNoise(_Proposer):
  """Gumbel noise and random remasking from `jax.random` (replayable)."""

  def propose(self, logits: jax.Array, key: jax.Array,
              knobs) -> tuple[jax.Array, jax.Array]:
    """logits [B, L, V] -> (candidates int32 [B, L], confidence float32 [B, L])."""
    return self._branches(logits, key, knobs.temperature, 'jax')


@dataclasses.dataclass(frozen=True)
class CounterNoise(_Proposer):
  """Counter-hashed noise; the fused Pallas kernel on GPU where it measured
  faster (temperature 0), its jnp twin elsewhere (kernels/fused.py)."""

  kernel_interpret: bool = False  # Run the kernel in interpret mode (tests).

  def propose(self, logits: jax.Array, key: jax.Array,
              knobs) -> tuple[jax.Array, jax.Array]:
    """logits [B, L, V] -> (candidates int32 [B, L], confidence float32 [B, L])."""
    return self._branches(logits, key, knobs.temperature, 'counter',
                          kernel_interpret=self.kernel_interpret)


PROPOSERS = {'jax': JaxNoise, 'counter': CounterNoise}


def build(sc, eos_id: int, eot_id: int, noised: bool | None = None) -> _Proposer:
  """The proposer of settings `sc` (a `SamplingConfig`); `noised` fixes the
  temperature branch (see `_Proposer.noised`)."""
  return PROPOSERS[sc.noise](
      remasking=sc.remasking, mask_id=sc.mask_id, eos_id=eos_id, eot_id=eot_id,
      logits_eos_inf=sc.logits_eos_inf,
      confidence_eos_eot_inf=sc.confidence_eos_eot_inf, noised=noised)
