"""Hand-written kernels, each with a jnp twin it is tested against.

`fused.py`: logits -> (candidate, confidence) in one pass (Triton on GPUs);
`fused_head.py`: the output head fused into that pass; `block_sparse.py`:
attention that skips the tiles a block-diffusion mask rules out. The samplers,
the attention dispatcher and the block-diffusion objective choose them.
"""
