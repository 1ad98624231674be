"""Gradient checkpointing per transformer layer (`training.grad_checkpoint`).

Each layer's forward runs inside `mx.checkpoint`: the backward pass recomputes the layer's
activations instead of keeping them, so activation memory grows with one layer, not all of them,
for roughly one more forward pass of compute. The layer keeps its class's behaviour and its
parameter names (adapters save and load as before): only this instance's class is swapped for a
subclass whose `__call__` checkpoints, unlike mlx-lm's `grad_checkpoint`, which patches the class
for every model in the process. Calls with a KV cache (generation) are not checkpointed.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

_checkpointed_classes: dict[type, type] = {}


def _checkpointed(cls: type) -> type:
    if cls in _checkpointed_classes or getattr(cls, "_rasft_checkpointed", False):
        return _checkpointed_classes.get(cls, cls)
    base_call = cls.__call__

    def __call__(self, x, *args, **kwargs):
        others = (*args, *kwargs.values())
        if any(not (value is None or isinstance(value, (mx.array, str))) for value in others):
            return base_call(self, x, *args, **kwargs)  # a cache object: generation

        def forward(params, x):
            self.update(params)
            return base_call(self, x, *args, **kwargs)

        return mx.checkpoint(forward)(self.trainable_parameters(), x)

    subclass = type(cls.__name__, (cls,), {"__call__": __call__, "_rasft_checkpointed": True})
    _checkpointed_classes[cls] = subclass
    return subclass


def checkpoint_layers(model: nn.Module) -> int:
    """Checkpoint every transformer layer of `model` (mlx-lm models list them in `.layers`);
    returns how many. Idempotent."""
    layers = list(model.layers)
    for layer in layers:
        layer.__class__ = _checkpointed(type(layer))
    return len(layers)


def is_checkpointed(model: nn.Module) -> bool:
    return all(getattr(type(layer), "_rasft_checkpointed", False) for layer in model.layers)
