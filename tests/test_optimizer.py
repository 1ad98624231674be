"""AdamW as the recipe builds it: torch's AdamW semantics (bias correction, decoupled decay)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from rasft_mlx.recipe.config import TrainingConfig
from rasft_mlx.training.train_step import build_optimizer

torch = pytest.importorskip("torch")

STEPS = 10


def fixed_gradients(steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 4)).astype(np.float32) * (1 + i) for i in range(steps)]


def torch_trajectory(start, gradients, lr, weight_decay) -> np.ndarray:
    param = torch.nn.Parameter(torch.tensor(start.copy()))
    optimizer = torch.optim.AdamW([param], lr=lr, weight_decay=weight_decay)
    for gradient in gradients:
        param.grad = torch.tensor(gradient)
        optimizer.step()
    return param.detach().numpy()


def mlx_trajectory(start, gradients, config: TrainingConfig) -> np.ndarray:
    optimizer = build_optimizer(config, config.learning_rate)
    params = {"w": mx.array(start)}
    for gradient in gradients:
        params = optimizer.apply_gradients({"w": mx.array(gradient)}, params)
        mx.eval(params)
    return np.array(params["w"])


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_over_several_steps(weight_decay):
    start = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    gradients = fixed_gradients(STEPS)
    config = TrainingConfig(learning_rate=1e-2, weight_decay=weight_decay)
    expected = torch_trajectory(start, gradients, 1e-2, weight_decay)
    np.testing.assert_allclose(mlx_trajectory(start, gradients, config), expected, atol=1e-6)


def test_without_bias_correction_the_first_steps_are_larger():
    """mlx's default (no correction): the first update is (1-b1)/sqrt(1-b2) = 3.16x torch's."""
    start = np.zeros((3, 4), np.float32)
    gradients = fixed_gradients(1)
    corrected = mlx_trajectory(start, gradients, TrainingConfig(learning_rate=1e-2))
    plain = mlx_trajectory(
        start, gradients, TrainingConfig(learning_rate=1e-2, adam_bias_correction=False)
    )
    ratio = np.abs(plain).mean() / np.abs(corrected).mean()
    assert ratio == pytest.approx((1 - 0.9) / np.sqrt(1 - 0.999), rel=1e-3)  # 3.16x
