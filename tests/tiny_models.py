"""Tiny random models with a locally trained tokenizer, saved so `mlx_lm.load(dir)` works offline."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rasft_mlx.data.synthetic import generate_problems

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


def chat_corpus(count: int = 400) -> list[str]:
    """Whole ChatML conversations (system prompt included in each), as the model will see them.

    BPE trained on these merges the system prompt and the chat roles into a few tokens, so
    sequences are about half as long as with `training_corpus` (and training twice as fast).
    """
    from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT

    problems = generate_problems(count, seed=123, min_level=0, max_level=5)
    return [
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{p.question}<|im_end|>\n"
        f"<|im_start|>assistant\n{p.solution}<|im_end|>\n"
        for p in problems
    ]


def train_tokenizer(vocab_size: int = 320, corpus: list[str] | None = None) -> Tokenizer:
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
    tokenizer.train_from_iterator(corpus or training_corpus(), trainer=trainer)
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


def make_tiny_model_dir(
    out_dir: Path,
    arch: str = "llama",
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    **overrides,
) -> Path:
    """A randomly initialised model of `arch` (llama or qwen2) with the test tokenizer."""
    tokenizer = tokenizer or train_tokenizer()
    config = model_config(arch, tokenizer.get_vocab_size(), **overrides)
    mx.random.seed(seed)
    model = build_model(config)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return save_model_dir(out_dir, model, config, tokenizer)


# The weak base model: a tiny llama pretrained (full-parameter SFT) only on level-0/1 problems
# whose answer is a single digit. It learns the format, copying and small-number arithmetic to
# convergence, so its skill is set by what it saw rather than by where training stopped: it
# solves the single-digit problems (~40% of level 0, part of level 1's ~33%) and fails on the
# two-digit ones, which fine-tuning on the full distribution then fixes.
WEAK_BASE_VOCAB = 600  # requested; the chat corpus saturates at ~530 tokens
WEAK_BASE_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 128,  # MLP and attention cost is in exp/sigmoid on CPU, not matmuls
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
WEAK_BASE_PRETRAIN = {
    "steps": 300,
    "levels": (0, 1),
    "lr": 3e-3,
    "batch_size": 16,
    "warmup": 20,
    "max_answer": 9,
}


def _response_batch(sequences, window: int, bucket_multiple: int = 8):
    """Inputs plus (positions, targets, mask) of each row's first `window` response targets.

    The loss only needs logits at response positions, so the pretraining step gathers those
    hidden states before the vocabulary projection (the logsumexp over the vocabulary is one of
    the costliest parts of a step on CPU).
    """
    import numpy as np

    length = max(len(s.tokens) for s in sequences) - 1
    length = -(-length // bucket_multiple) * bucket_multiple
    rows = len(sequences)
    inputs = np.zeros((rows, length), dtype=np.int32)
    positions = np.zeros((rows, window), dtype=np.int32)
    targets = np.zeros((rows, window), dtype=np.int32)
    mask = np.zeros((rows, window), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        tokens = np.asarray(sequence.tokens, dtype=np.int32)
        inputs[row, : len(tokens) - 1] = tokens[:-1]
        first = sequence.prompt_length - 1
        count = min(len(tokens) - 1 - first, window)
        positions[row, :count] = np.arange(first, first + count)
        targets[row, :count] = tokens[first + 1 : first + 1 + count]
        mask[row, :count] = 1.0
    return mx.array(inputs), mx.array(positions), mx.array(targets), mx.array(mask)


def pretrain(
    model_dir: Path,
    steps: int,
    levels: tuple[int, int],
    seed: int = 0,
    lr: float = 3e-3,
    *,
    batch_size: int = 16,
    warmup: int = 20,
    max_answer: int | None = None,
    problem_count: int = 3000,
) -> float:
    """Full-parameter SFT of a saved tiny model on the synthetic task, saved in place.

    Gives tests a weak "base model" that solves some problems, like a real instruct model would.
    `max_answer` keeps only the problems whose answer is at most that (even 5% of two-digit
    answers is enough for the model to learn to copy every number). Returns the mean loss of the
    last 10 steps. Compiled step; the loss covers response tokens only; AdamW with beta2 0.98
    (with 0.999 tiny models sit on a plateau for hundreds of steps before they learn to copy
    from the question); linear warmup, then cosine decay to lr / 10.
    """
    from functools import partial

    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm import load

    from rasft_mlx.data.encoding import encode_expert_sequences
    from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT
    from rasft_mlx.training.batching import plan_batches

    model, tokenizer = load(str(model_dir))
    model.set_dtype(mx.float32)
    problems = generate_problems(
        problem_count, seed=seed + 7, min_level=levels[0], max_level=levels[1]
    )
    if max_answer is not None:
        problems = [p for p in problems if int(p.answer) <= max_answer]
    sequences, _ = encode_expert_sequences(tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 512)
    if len(sequences) < batch_size:
        raise ValueError(f"only {len(sequences)} pretraining sequences for batch size {batch_size}")
    window = max(s.response_length for s in sequences)

    warmup = max(1, min(warmup, steps - 1))
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(lr * 0.01, lr, warmup),
            optim.cosine_decay(lr, max(steps - warmup, 1), lr * 0.1),
        ],
        [warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, betas=[0.9, 0.98], weight_decay=0.0)

    def loss_fn(model, inputs, positions, targets, mask):
        hidden = mx.take_along_axis(model.model(inputs), positions[..., None], axis=1)
        if model.args.tie_word_embeddings:
            logits = model.model.embed_tokens.as_linear(hidden)
        else:
            logits = model.lm_head(hidden)
        picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
        logprobs = picked - mx.logsumexp(logits, axis=-1)
        return -(logprobs * mask).sum() / mask.sum()

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, positions, targets, mask):
        loss, grads = loss_and_grad(model, inputs, positions, targets, mask)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    lengths = [len(s.tokens) for s in sequences]
    batches: list[list[int]] = []
    while len(batches) < steps:
        batches += [b for b in plan_batches(lengths, batch_size, rng) if len(b) == batch_size]
    losses = []
    for indices in batches[:steps]:
        loss = step(*_response_batch([sequences[i] for i in indices], window))
        mx.eval(loss, model.state, optimizer.state)
        losses.append(loss.item())
    mx.save_safetensors(
        str(model_dir / "model.safetensors"), dict(tree_flatten(model.parameters()))
    )
    return float(np.mean(losses[-10:]))


def make_weak_base_model(out_dir: Path, seed: int = 0) -> Path:
    """Build and pretrain the weak base model (deterministic in `seed`); ~10-20 s on 2 CPU cores.

    Greedy pass@1 with seed 0: about 0.4 on level 0 and 0.1-0.2 on level 1 (see
    tests/test_learning.py); two-digit answers are never right, so SFT has clear room to improve.
    """
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(WEAK_BASE_VOCAB, chat_corpus())
    make_tiny_model_dir(out_dir, "llama", seed=seed, tokenizer=tokenizer, **WEAK_BASE_CONFIG)
    pretrain(out_dir, seed=seed, **WEAK_BASE_PRETRAIN)
    return out_dir
