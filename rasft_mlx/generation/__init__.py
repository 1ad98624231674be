"""Generation: the batched rollout engine, the nucleus sampler, completions on the live adapter weights."""
