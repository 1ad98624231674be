"""Decode lanes (`generation/lanes.py`): the rows split over CPU streams that decode at once give
the tokens of one lane, each lane decodes its own share of the rows on its own stream, seeded
samples repeat, and the BLAS thread count comes back after a generation."""

from __future__ import annotations

import ctypes
import functools

import mlx.core as mx
import pytest
from mlx_lm import load

from rasft_mlx.generation.engine import EngineSettings, generate_rows
from rasft_mlx.generation.lanes import default_lanes
from rasft_mlx.runtime.blas import blas_threads

NO_EOS = [10**6]
QUESTIONS = ["What is 3 + 4?", "Hi", "Compute 12 + 30, then double it.", "Add 1 and 1.", "Zero?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import make_tiny_model_dir

    return make_tiny_model_dir(
        tmp_path_factory.mktemp("tiny-lanes"),
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    model, tokenizer = load(str(tiny_dir))
    prompts = [tokenizer.encode(f"Reason step by step.\n{q}") for q in QUESTIONS]
    return model, prompts


def openblas_threads() -> int | None:
    try:
        return ctypes.CDLL(None).openblas_get_num_threads()
    except AttributeError:
        return None


class CallRecorder:
    """The model, recording each decode call's rows and the stream it was issued on."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, inputs, cache=None):
        if inputs.shape[1] == 1:
            stream = str(mx.default_stream(mx.default_device()))
            self.calls.append((inputs.shape[0], stream))
        return self.model(inputs, cache=cache)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_lanes_give_the_greedy_tokens_of_one_lane(tiny):
    """Rows stop at different steps (a stop token) and at their own limits, and waiting rows
    take the places of finished ones, in every lane count."""
    model, prompts = tiny
    limits = [24, 7, 24, 13, 24]
    first, _ = generate_rows(model, prompts, 1, EngineSettings(24, lanes=1), NO_EOS)
    outputs = [r[0].token_ids for r in first]
    stop = sorted(set(outputs[2]) - set(outputs[0]))  # rows of prompt 2 stop; prompt 0's do not
    results = {}
    for lanes in (1, 2, 3):
        settings = EngineSettings(24, max_rows=6, check_every=1, lanes=lanes)
        results[lanes], stats = generate_rows(model, prompts, 3, settings, stop, limits=limits)
        assert stats.extra["lanes"] == lanes and stats.chunks > lanes  # refills happened
    assert results[2] == results[1] and results[3] == results[1]
    samples = [s for r in results[1] for s in r]
    assert any(not s.truncated for s in samples) and any(s.truncated for s in samples)


@pytest.mark.parametrize(
    "max_rows, lanes, most_rows",
    [(8, 1, 8), (8, 2, 4), (64, 2, 5)],  # 10 rows: lanes of 4 with refills; 5 each at once
)
def test_each_lane_decodes_its_share_on_its_own_stream(tiny, max_rows, lanes, most_rows):
    model, prompts = tiny
    recorder = CallRecorder(model)
    settings = EngineSettings(12, max_rows=max_rows, lanes=lanes)
    generate_rows(recorder, prompts, 2, settings, NO_EOS)
    assert max(rows for rows, _ in recorder.calls) == most_rows
    assert len({stream for _, stream in recorder.calls}) == lanes


def test_seeded_samples_repeat_in_lanes(tiny):
    model, prompts = tiny
    settings = EngineSettings(
        16, temperature=1.0, top_p=0.9, repetition_penalty=1.2, max_rows=4, lanes=2
    )
    first, _ = generate_rows(model, prompts, 3, settings, NO_EOS, seed=7)
    again, _ = generate_rows(model, prompts, 3, settings, NO_EOS, seed=7)
    assert first == again
    assert len({s.token_ids for r in first for s in r}) > 5  # they are samples, not one answer


def test_blas_threads_come_back(tiny):
    original = openblas_threads()
    if original is None:
        pytest.skip("OpenBLAS is not loaded in this process")
    before = 3  # a count no lane sets on this machine
    ctypes.CDLL(None).openblas_set_num_threads(before)
    try:
        with pytest.raises(RuntimeError), blas_threads(1):
            assert openblas_threads() == 1
            raise RuntimeError("stopped inside the block")
        assert openblas_threads() == before
        model, prompts = tiny
        generate_rows(model, prompts, 2, EngineSettings(8, lanes=2), NO_EOS)
        assert openblas_threads() == before
    finally:
        ctypes.CDLL(None).openblas_set_num_threads(original)


def test_default_lanes_follow_the_environment(monkeypatch):
    monkeypatch.setenv("RASFT_MLX_DECODE_LANES", "3")
    assert default_lanes() == 3
    for bad in ("two", "0"):
        monkeypatch.setenv("RASFT_MLX_DECODE_LANES", bad)
        with pytest.raises(ValueError, match="RASFT_MLX_DECODE_LANES"):
            default_lanes()
    monkeypatch.delenv("RASFT_MLX_DECODE_LANES")
    assert 1 <= default_lanes() <= 2


def test_a_model_with_lora_layers_gets_lanes_only_where_the_tape_is_wide(
    tiny, tiny_dir, monkeypatch
):
    """At MLX's default tape width a live adapter's branches stop two lanes from overlapping
    (runtime/eval_graph.py), so such a model keeps one lane there and gets two at the width
    rasft_mlx sets on the CPU; in two lanes it gives the tokens of one."""
    from mlx.utils import tree_map

    from rasft_mlx.models.adapters import apply_adapters
    from rasft_mlx.recipe.config import LoraConfig

    monkeypatch.delenv("RASFT_MLX_DECODE_LANES", raising=False)
    monkeypatch.setattr("rasft_mlx.generation.lanes.usable_cores", lambda: 2)
    monkeypatch.setenv("MLX_BFS_MAX_WIDTH", "20")
    _, prompts = tiny
    model, _ = load(str(tiny_dir))  # its own copy: adapters go on it
    assert default_lanes(model) == 2
    apply_adapters(model, LoraConfig(rank=4))
    assert default_lanes(model) == 1
    _, stats = generate_rows(model, prompts, 2, EngineSettings(4), NO_EOS)
    assert stats.extra["lanes"] == 1
    monkeypatch.setenv("MLX_BFS_MAX_WIDTH", "64")
    assert default_lanes(model) == 2
    mx.random.seed(3)  # a live adapter that changes the logits (B starts at zero)
    model.update(
        tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.trainable_parameters())
    )
    one, _ = generate_rows(model, prompts, 2, EngineSettings(16, lanes=1), NO_EOS)
    two, stats = generate_rows(model, prompts, 2, EngineSettings(16), NO_EOS)
    assert stats.extra["lanes"] == 2 and two == one


def test_rasft_mlx_widens_the_tape_on_import_on_the_cpu_unless_the_user_set_it():
    import os
    import subprocess
    import sys

    code = "import rasft_mlx, os; print(os.environ.get('MLX_BFS_MAX_WIDTH'))"
    env = {k: v for k, v in os.environ.items() if k != "MLX_BFS_MAX_WIDTH"}
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    on_cpu = mx.default_device().type == mx.DeviceType.cpu  # a GPU keeps MLX's default
    assert run(env=env).stdout.strip() == ("64" if on_cpu else "None")
    assert run(env={**env, "MLX_BFS_MAX_WIDTH": "33"}).stdout.strip() == "33"
