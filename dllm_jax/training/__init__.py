"""Training: the run config, the loop and its step, inputs, checkpoints and workdirs."""
