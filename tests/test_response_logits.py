"""The response window of a batch, and logits projected only at its positions."""

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import build_model, model_config

from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.models.adapters import adapter_modules, apply_adapters
from rasft_mlx.models.response_logits import ResponseLogits, output_head
from rasft_mlx.recipe.config import LoraConfig
from rasft_mlx.training.batching import collate, window_length
from rasft_mlx.training.losses import token_logprobs


@pytest.mark.parametrize(
    ("longest", "length", "multiple", "expected"),
    [
        (97, 128, 32, 128),  # quarters of 32
        (96, 128, 32, 96),
        (5, 128, 32, 32),
        (40, 64, 32, 64),  # a quarter of 64 rounds up to the multiple, 32
        (130, 512, 32, 256),  # quarters of 128
        (3, 16, 8, 8),
    ],
)
def test_window_length_in_quarters_of_the_input(longest, length, multiple, expected):
    assert window_length(longest, length, multiple) == expected


def test_collate_puts_each_response_at_the_start_of_its_window():
    sequences = [
        TrainingSequence(
            "a", (5, 6, 7, 8, 9), prompt_length=3, reference_logprobs=np.array([-1, -2])
        ),
        TrainingSequence("b", (1, 2, 3), prompt_length=1, weight=0.5),
    ]
    batch = collate(sequences, 3, bucket_multiple=4)
    np.testing.assert_array_equal(np.array(batch.inputs), [[5, 6, 7, 8], [1, 2, 0, 0], [0] * 4])
    np.testing.assert_array_equal(np.array(batch.positions), [[2, 3, 0, 0], [0, 1, 0, 0], [0] * 4])
    np.testing.assert_array_equal(np.array(batch.targets), [[8, 9, 0, 0], [2, 3, 0, 0], [0] * 4])
    np.testing.assert_array_equal(np.array(batch.mask), [[1, 1, 0, 0], [1, 1, 0, 0], [0] * 4])
    np.testing.assert_array_equal(
        np.array(batch.reference_logprobs), [[-1, -2, 0, 0], [0, 0, 0, 0], [0] * 4]
    )
    np.testing.assert_array_equal(np.array(batch.sequence_weights), [1.0, 0.5, 0.0])
    assert batch.token_count == 4 and batch.input_token_count == 6


def tiny(arch: str, tie: bool):
    mx.random.seed(0)
    model = build_model(model_config(arch, 96, tie_word_embeddings=tie))
    apply_adapters(model, LoraConfig(rank=4, scale=2.0, dropout=0.5))
    for _, module in adapter_modules(model):  # non-zero B, so adapter dropout changes outputs
        module.lora_b = 0.1 * mx.random.normal(module.lora_b.shape)
    model.train()  # dropout on: the head check must switch it off to compare
    return model


@pytest.mark.parametrize(("arch", "tie"), [("llama", True), ("qwen2", False)])
def test_gathered_projection_equals_the_full_logits_at_response_positions(arch, tie):
    model = tiny(arch, tie)
    assert output_head(model) is not None
    assert model.training, "the check restores training mode"
    rng = np.random.default_rng(1)
    sequences = [
        TrainingSequence(str(i), tuple(rng.integers(0, 96, size=n).tolist()), prompt_length=p)
        for i, (n, p) in enumerate([(30, 10), (17, 12), (25, 3)])
    ]
    batch = collate(sequences, 4, bucket_multiple=8)
    model.eval()
    logits_at = ResponseLogits(model)
    assert logits_at.projects_gathered
    gathered = np.array(token_logprobs(logits_at(batch.inputs, batch.positions), batch.targets))
    assert batch.positions.shape[1] < batch.inputs.shape[1], "the window is shorter"
    for row, sequence in enumerate(sequences):
        tokens = mx.array([sequence.tokens])
        alone = np.array(token_logprobs(model(tokens[:, :-1]), tokens[:, 1:]))[0]
        np.testing.assert_allclose(
            gathered[row, : sequence.response_length],
            alone[sequence.prompt_length - 1 :],
            atol=1e-5,
        )


def test_a_model_with_more_in_its_call_gets_full_logits_gathered():
    from mlx_lm.models.llama import Model, ModelArgs

    class Capped(Model):
        def __call__(self, inputs, cache=None):
            return 5.0 * mx.tanh(super().__call__(inputs, cache) / 5.0)

    capped = Capped(ModelArgs.from_dict(model_config("llama", 96)))
    assert output_head(capped) is None
    logits_at = ResponseLogits(capped)
    assert not logits_at.projects_gathered
    inputs = mx.array([[3, 4, 5, 6, 7]])
    positions = mx.array([[4, 1]])
    np.testing.assert_array_equal(
        np.array(logits_at(inputs, positions)), np.array(capped(inputs))[:, [4, 1]]
    )


@pytest.mark.parametrize("tie", [True, False])
def test_quantized_models_project_gathered_states_exactly(tie):
    import mlx.nn as nn

    mx.random.seed(3)
    model = build_model(model_config("llama", 128, tie_word_embeddings=tie))
    nn.quantize(model, group_size=32, bits=4)
    logits_at = ResponseLogits(model)
    assert logits_at.projects_gathered
    inputs, positions = mx.array([[1, 5, 7, 9, 11, 3]]), mx.array([[5, 2, 0]])
    expected = mx.take_along_axis(model(inputs), positions[..., None], axis=1)
    assert mx.array_equal(logits_at(inputs, positions), expected).item()
