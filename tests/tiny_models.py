"""Tiny random models with a locally trained tokenizer, saved so `mlx_lm.load(dir)` works offline."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rasft_mlx.synthetic import generate_problems

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def training_corpus(count: int = 400) -> list[str]:
    problems = generate_problems(count, seed=123, min_level=0, max_level=5)
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    return [system, "user", "assistant"] + [f"{p.question}\n{p.solution}" for p in problems]


def train_tokenizer(vocab_size: int = 320) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    return tokenizer


def model_config(arch: str, vocab_size: int, **overrides) -> dict:
    config = {
        "model_type": arch,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
    config.update(overrides)
    return config


def build_model(config: dict):
    if config["model_type"] == "qwen2":
        from mlx_lm.models.qwen2 import Model, ModelArgs
    else:
        from mlx_lm.models.llama import Model, ModelArgs
    return Model(ModelArgs.from_dict(config))


def save_model_dir(out_dir: Path, model, config: dict, tokenizer: Tokenizer) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), dict(tree_flatten(model.parameters())))
    eos_id = tokenizer.token_to_id("<|im_end|>")
    (out_dir / "config.json").write_text(json.dumps({**config, "eos_token_id": eos_id}, indent=2))
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": 4096,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out_dir


def make_tiny_model_dir(out_dir: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """A randomly initialised model of `arch` (llama or qwen2) with the test tokenizer."""
    tokenizer = train_tokenizer()
    config = model_config(arch, tokenizer.get_vocab_size(), **overrides)
    mx.random.seed(seed)
    model = build_model(config)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return save_model_dir(out_dir, model, config, tokenizer)


def pretrain(model_dir: Path, steps: int, levels: tuple[int, int], seed: int = 0, lr: float = 3e-3):
    """Full-parameter SFT of a saved tiny model on the synthetic task, saved in place.

    Gives tests a weak "base model" that solves some problems, like a real instruct model would.
    """
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm import load

    from rasft_mlx.batching import collate, plan_batches
    from rasft_mlx.config import DEFAULT_SYSTEM_PROMPT
    from rasft_mlx.encoding import encode_expert_sequences
    from rasft_mlx.losses import LossSettings, loss_sum_and_tokens

    model, tokenizer = load(str(model_dir))
    problems = generate_problems(2000, seed=seed + 7, min_level=levels[0], max_level=levels[1])
    sequences, _ = encode_expert_sequences(tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 512)
    settings = LossSettings("sft")

    def loss_fn(model, batch):
        total, count = loss_sum_and_tokens(model(batch.inputs), batch.targets, batch.mask, settings)
        return total / count

    optimizer = optim.AdamW(learning_rate=optim.cosine_decay(lr, steps, lr * 0.1))
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    rng = np.random.default_rng(seed)
    batches = []
    while len(batches) < steps:
        batches += plan_batches([len(s.tokens) for s in sequences], 32, rng)
    for indices in batches[:steps]:
        batch = collate([sequences[i] for i in indices], 32, 32)
        loss, grads = loss_and_grad(model, batch)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, loss)
    mx.save_safetensors(
        str(model_dir / "model.safetensors"), dict(tree_flatten(model.parameters()))
    )
    return float(loss)
