"""Training: losses, the compiled step, batching, the step plan, the loop, checkpoints, the run directory, evaluation."""
