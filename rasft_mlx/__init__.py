"""rasft-mlx: Rollout-Adaptive Supervised Fine-Tuning for reasoning on MLX."""

__version__ = "0.1.0"
