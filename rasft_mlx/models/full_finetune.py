"""Full fine-tuning (`lora.type: full`): which weights train, and the frozen starting weights.

Every weight of the last `lora.num_layers` transformer layers trains (all of them with -1), with
the weights outside the layer stack (the final norm, and with `lora.train_embeddings` the token
embeddings and the output head). There are no adapters to switch off, so the reference policy
(RASFT's ratio, SFT+KL, ASFT, drift) is a frozen copy of the starting weights: one more copy of
the trained weights (all of them with the defaults), the frozen ones shared. It is a real copy,
not the same arrays: a compiled step whose inputs are the live weights may not also read them as
constants (mx.compile refuses), and MLX arrays are immutable values, so training never changes
it. `starting_weights_in` puts the copy in the model for a block, inside `mx.compile` and
`nn.value_and_grad` too, and then restores the live weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from rasft_mlx.models.errors import ModelError

# Kept in the module object's __dict__, not its parameter dict: never a parameter, never saved.
_STARTING_WEIGHTS = "_rasft_starting_weights"
_QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def trained_layer_count(model: nn.Module, num_layers: int) -> int:
    """How many of the last transformer layers train (or get adapters): -1 = all of them."""
    total = len(model.layers)
    return total if num_layers < 0 else min(num_layers, total)


def vocabulary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The token embeddings and an untied output head: every embedding outside the layer stack,
    and every linear there whose output is the vocabulary (a tied head is the embedding itself)."""
    outside = [
        (name, module)
        for name, module in model.named_modules()
        if ".layers." not in f".{name}." and isinstance(module, (nn.Embedding, nn.Linear))
    ]
    embeddings = [(n, m) for n, m in outside if isinstance(m, nn.Embedding)]
    vocab = {m.weight.shape[0] for _, m in embeddings}
    heads = [(n, m) for n, m in outside if isinstance(m, nn.Linear) and m.weight.shape[0] in vocab]
    return embeddings + heads


def apply_full_finetune(model: nn.Module, num_layers: int, train_embeddings: bool) -> None:
    """Unfreeze the trained weights (the rest stays frozen) and keep the starting weights."""
    quantized = [name for name, m in model.named_modules() if isinstance(m, _QUANTIZED)]
    if quantized:
        raise ModelError(
            f"lora.type full trains the weights themselves, and this model is quantized "
            f"({quantized[0]}, ...): set model.dequantize: always, or use lora.type lora"
        )
    layers = list(model.layers)
    trained = trained_layer_count(model, num_layers)
    model.unfreeze()
    for layer in layers[: len(layers) - trained]:
        layer.freeze()
    if not train_embeddings:
        for _, module in vocabulary_modules(model):
            module.freeze()
    start = [(name, mx.array(value)) for name, value in tree_flatten(model.trainable_parameters())]
    mx.eval([value for _, value in start])
    object.__setattr__(model, _STARTING_WEIGHTS, start)
    model.eval()


def starting_weights(model: nn.Module) -> list[tuple[str, mx.array]] | None:
    """The trained leaves as they were before training, or None (not a full fine-tune)."""
    return model.__dict__.get(_STARTING_WEIGHTS)


@contextmanager
def starting_weights_in(model: nn.Module) -> Iterator[None]:
    """Run the block on the starting weights, then put the live ones back (even on an error)."""
    start = starting_weights(model)
    if start is None:
        raise ModelError("the model is not a full fine-tune: it holds no starting weights")
    live = dict(tree_flatten(model.parameters()))
    model.update(tree_unflatten(start))
    try:
        yield
    finally:
        model.update(tree_unflatten([(name, live[name]) for name, _ in start]))
