"""Convert llama / qwen2 GGUF checkpoints into MLX model directories that `mlx_lm.load` reads offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from rasft_mlx.console.progress import phase

SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
IMPORTER_VERSION = 1
MARKER_FILE = "gguf_import.json"
GROUP_SIZE = 32
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_Q = gguf.GGMLQuantizationType
# GGUF types with one f16 scale d per 32 values: (bits, code offset; None: an f16 minimum follows d)
_BLOCK32_TYPES = {
    _Q.Q4_0: (4, 8),
    _Q.Q4_1: (4, None),
    _Q.Q5_0: (5, 16),
    _Q.Q5_1: (5, None),
    _Q.Q8_0: (8, 128),
}
_SPECIAL_TOKEN_KEYS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "pad": "padding_token_id",
    "unk": "unknown_token_id",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class GGUFImportError(ValueError):
    """A GGUF file that is missing, malformed or not convertible."""


def cache_root() -> Path:
    """`$RASFT_MLX_CACHE`, else ~/.cache/rasft-mlx."""
    return Path(os.environ.get("RASFT_MLX_CACHE") or Path.home() / ".cache" / "rasft-mlx")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    dequantize: bool = True,
    dtype: str = "float32",
) -> Path:
    """Convert a GGUF file into an MLX model directory (cached by file hash when no `out_dir`).

    dequantize=False keeps weights quantised as MLX affine, group 32: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0,
    Q4_K and Q5_K exactly, other types re-quantised to 8 bits. `dtype` is that of all floats.
    """
    path = Path(gguf_path).expanduser()
    _check_is_gguf(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    sha = file_sha256(path)
    marker = {
        "source": path.name,
        "sha256": sha,
        "dequantize": dequantize,
        "dtype": dtype,
        "importer_version": IMPORTER_VERSION,
    }
    if out_dir is None:
        target = cache_root() / "gguf" / f"{sha[:16]}-{'dequant' if dequantize else 'q'}-{dtype}"
        if _is_complete(target, marker):
            return target
    else:
        target = Path(out_dir).expanduser()
        ours = target.is_dir() and (not any(target.iterdir()) or (target / MARKER_FILE).exists())
        if target.exists() and not ours:
            raise GGUFImportError(f"{target} exists and is not an earlier GGUF conversion")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        _convert_into(path, tmp, dequantize=dequantize, dtype=DTYPES[dtype])
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        _install(tmp, target, replace=out_dir is not None or not _is_complete(target, marker))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_is_gguf(path: Path) -> None:
    if not path.is_file():
        raise GGUFImportError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFImportError(f"{path} is not a GGUF file (starts with {magic!r}, not b'GGUF')")


def _is_complete(target: Path, marker: dict) -> bool:
    try:
        return json.loads((target / MARKER_FILE).read_text()) == marker
    except (OSError, ValueError):
        return False


def _install(tmp: Path, target: Path, *, replace: bool) -> None:
    """Move a finished conversion into place; with replace=False an existing one wins."""
    old = None
    if replace and target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
    try:
        os.replace(tmp, target)
    except OSError:
        if replace or not target.is_dir():
            raise  # else a concurrent conversion finished first: keep it
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_gguf(path: str | Path) -> tuple[gguf.GGUFReader, dict]:
    """The reader and the file's metadata as plain Python values."""
    path = Path(path)
    _check_is_gguf(path)
    try:
        reader = gguf.GGUFReader(path)
        metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    except Exception as e:  # gguf raises assorted errors on truncated or corrupt files
        raise GGUFImportError(f"{path}: cannot read GGUF: {e}") from e
    return reader, metadata


def _convert_into(path: Path, out: Path, *, dequantize: bool, dtype: mx.Dtype) -> None:
    reader, md = read_gguf(path)
    arch = _require(md, "general.architecture", path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFImportError(
            f"{path.name}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    tokenizer = build_tokenizer(md, path)
    weights = mlx_weights(_load_tensors(reader, path, dequantize, dtype), md, path)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(model_config(md, weights, path), indent=2))
    tokenizer.save(str(out / "tokenizer.json"))
    tok_config = tokenizer_config(md)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    special = {k: v for k, v in tok_config.items() if k.endswith("_token") and isinstance(v, str)}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _require(md: dict, key: str, path: Path | str):
    if key not in md:
        raise GGUFImportError(f"{Path(path).name}: missing GGUF metadata key {key!r}")
    return md[key]


def _load_tensors(reader, path: Path, dequantize: bool, dtype: mx.Dtype) -> dict:
    """GGUF-named arrays; kept-quantised ones as MLX affine `weight`/`scales`/`biases` triples."""
    out = {}
    with phase(f"converting {path.name}", len(reader.tensors), unit="tensors") as reporter:
        for t in reader.tensors:
            out.update(_convert_tensor(t, path, dequantize, dtype))
            reporter.advance(1)
    return out


def _convert_tensor(t, path: Path, dequantize: bool, dtype: mx.Dtype) -> dict:
    stem = t.name.rsplit(".", 1)[0]
    shape = tuple(int(d) for d in reversed(t.shape))
    if t.tensor_type in (_Q.F32, _Q.F16):
        parts = {t.name: mx.array(t.data.reshape(shape))}
    else:
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        except NotImplementedError as e:
            raise GGUFImportError(
                f"{path.name}: tensor {t.name!r} has unsupported type {t.tensor_type.name} "
                "(supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants)"
            ) from e
        keep = not dequantize and t.tensor_type != _Q.BF16
        if not keep or len(shape) != 2 or shape[1] % GROUP_SIZE:
            triple = (w,)
        else:  # exact where the block layout allows it, else 8-bit (~0.5% rms error)
            triple = _exact_affine(t.data, t.tensor_type, w)
            triple = triple or mx.quantize(mx.array(w), GROUP_SIZE, 8)
        parts = dict(zip((t.name, f"{stem}.scales", f"{stem}.biases"), triple, strict=False))
    parts = {k: mx.array(v) for k, v in parts.items()}
    parts = {k: v if v.dtype == mx.uint32 else v.astype(dtype) for k, v in parts.items()}
    mx.eval(parts)
    return parts


def _exact_affine(raw: np.ndarray, qtype, w: np.ndarray):
    """MLX affine (packed codes, scales, biases), group 32, of a tensor whose GGUF blocks have
    one scale and offset per 32 values (Q4_0..Q8_0, Q4_K, Q5_K); None for other types."""
    rows, cols = w.shape
    if qtype in _BLOCK32_TYPES:
        bits, offset = _BLOCK32_TYPES[qtype]
    elif qtype in (_Q.Q4_K, _Q.Q5_K):
        bits, offset = (4 if qtype == _Q.Q4_K else 5), None
    else:
        return None
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(rows, cols // block_size, type_size)

    def f16(start):
        return blocks[..., start : start + 2].copy().view(np.float16)[..., 0].astype(np.float32)

    if qtype in _BLOCK32_TYPES:
        scales = f16(0)
        biases = f16(2) if offset is None else -offset * scales
    else:  # 256-value super-blocks: d, dmin, then 8 six-bit (scale, min) pairs
        sub_scales, sub_mins = gguf.quants.Q4_K.get_scale_min(blocks[..., 4:16].reshape(-1, 12))
        scales = (f16(0)[..., None] * sub_scales.reshape(rows, -1, 8)).reshape(rows, -1)
        biases = -(f16(2)[..., None] * sub_mins.reshape(rows, -1, 8)).reshape(rows, -1)
    groups = w.reshape(rows, -1, GROUP_SIZE) - biases[..., None]
    codes = np.rint(groups / np.where(scales == 0, 1, scales)[..., None])
    codes = codes.clip(0, 2**bits - 1).astype(np.uint32)
    return _pack_codes(codes, bits).reshape(rows, -1), scales, biases


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packing: each group of 32 codes as a little-endian bit stream of `bits` uint32s."""
    words = np.zeros((*codes.shape[:-1], bits), dtype=np.uint64)
    for j in range(codes.shape[-1]):
        word, shift = divmod(j * bits, 32)
        code = codes[..., j].astype(np.uint64)
        words[..., word] |= code << np.uint64(shift)
        if shift + bits > 32:
            words[..., word + 1] |= code >> np.uint64(32 - shift)
    return (words & 0xFFFFFFFF).astype(np.uint32)


def mlx_weights(tensors: dict, md: dict, path: Path | str = "<gguf>") -> dict:
    """Rename GGUF tensors to mlx-lm names; undo llama.cpp's q/k row permutation for llama."""
    arch = md["general.architecture"]
    n_head = _require(md, f"{arch}.attention.head_count", path)
    heads = {"attn_q": n_head, "attn_k": md.get(f"{arch}.attention.head_count_kv", n_head)}
    out = {}
    for name, array in tensors.items():
        stem, leaf = name.rsplit(".", 1)
        parts = stem.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
            new_stem = f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
            if arch == "llama" and parts[2] in heads:
                array = _unpermute_rows(array, heads[parts[2]])
        elif stem in _GLOBAL_NAMES:
            new_stem = _GLOBAL_NAMES[stem]
        else:
            raise GGUFImportError(f"{Path(path).name}: unexpected tensor {name!r} for {arch}")
        out[f"{new_stem}.{leaf}"] = array
    return out


def _unpermute_rows(w: mx.array, n_head: int) -> mx.array:
    rows, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def model_config(md: dict, weights: dict, path: Path | str = "<gguf>") -> dict:
    """config.json for mlx-lm from the `{arch}.*` metadata."""
    arch = md["general.architecture"]

    def need(key):
        return _require(md, f"{arch}.{key}", path)

    def short(x: float) -> float:  # 9.999999747378752e-06 -> 1e-05
        return float(f"{x:.7g}")

    heads = need("attention.head_count")
    config = {
        "model_type": arch,
        "architectures": [SUPPORTED_ARCHITECTURES[arch]],
        "hidden_size": need("embedding_length"),
        "num_hidden_layers": need("block_count"),
        "intermediate_size": need("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": md.get(f"{arch}.attention.head_count_kv", heads),
        "rms_norm_eps": short(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": short(md.get(f"{arch}.rope.freq_base", 1e4 if arch == "llama" else 1e6)),
        "max_position_embeddings": need("context_length"),
        "vocab_size": weights["model.embed_tokens.weight"].shape[0],
        "tie_word_embeddings": "lm_head.weight" not in weights,
    }
    if arch == "llama" and f"{arch}.attention.key_length" in md:
        config["head_dim"] = md[f"{arch}.attention.key_length"]
    scaling = md.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": short(need("rope.scaling.factor"))}
    elif scaling != "none":
        raise GGUFImportError(f"{Path(path).name}: rope scaling {scaling!r} is not supported")
    for key, gguf_key in _SPECIAL_TOKEN_KEYS.items():
        if key != "unk" and (token_id := md.get(f"tokenizer.ggml.{gguf_key}")) is not None:
            config[f"{key}_token_id"] = token_id
    per_module = {}  # mlx-lm quantises exactly the modules named here
    for name in (n for n in weights if n.endswith(".scales")):
        stem = name[: -len(".scales")]
        bits = weights[f"{stem}.weight"].shape[-1] // weights[name].shape[-1]
        per_module[stem] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    if per_module:
        bits = Counter(q["bits"] for q in per_module.values()).most_common(1)[0][0]
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
        config["quantization"].update(per_module)
    return config


def build_tokenizer(md: dict, path: Path | str = "<gguf>") -> Tokenizer:
    """A `tokenizers` byte-level BPE from `tokenizer.ggml.*` metadata."""
    kind = _require(md, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        msg = f"tokenizer.ggml.model is {kind!r}; only 'gpt2' (byte-level BPE) is supported"
        raise GGUFImportError(f"{Path(path).name}: {msg}")
    tokens = _require(md, "tokenizer.ggml.tokens", path)
    merges = [tuple(m.split(" ", 1)) for m in _require(md, "tokenizer.ggml.merges", path)]
    token_types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre_name = md.get("tokenizer.ggml.pre", "default")
    if pre_name == "qwen2":  # as Qwen2's own tokenizer (and transformers' Qwen2Tokenizer)
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(pre_name, path)
    tokenizer.decoder = decoders.ByteLevel()
    post = [processors.ByteLevel(trim_offsets=False)]
    if md.get("tokenizer.ggml.add_bos_token") and "tokenizer.ggml.bos_token_id" in md:
        bos_id = md["tokenizer.ggml.bos_token_id"]
        bos = tokens[bos_id]
        single, pair = f"{bos} $A", f"{bos} $A {bos} $B"
        post.append(processors.TemplateProcessing(single, pair, special_tokens=[(bos, bos_id)]))
    tokenizer.post_processor = processors.Sequence(post)
    control = [tokens[i] for i, token_type in enumerate(token_types) if token_type == 3]
    user_defined = [tokens[i] for i, token_type in enumerate(token_types) if token_type == 4]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    return tokenizer


def _pre_tokenizer(name: str, path: Path | str):
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":
        return pre.Sequence([pre.Digits(individual_digits=True), byte_level])
    if name == "qwen2":
        split = pre.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False)
        return pre.Sequence([split, pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    if name not in ("gpt-2", "default"):
        warnings.warn(
            f"{Path(path).name}: unknown tokenizer.ggml.pre {name!r}; using plain GPT-2 byte-level"
            " pre-tokenization, which may split text differently from the original tokenizer",
            stacklevel=3,
        )
    return byte_level


def tokenizer_config(md: dict) -> dict:
    """tokenizer_config.json: special tokens, add_bos_token and the chat template."""
    tokens = md["tokenizer.ggml.tokens"]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(md.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(md.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for key, gguf_key in _SPECIAL_TOKEN_KEYS.items():
        token_id = md.get(f"tokenizer.ggml.{gguf_key}")
        if token_id is not None and 0 <= token_id < len(tokens):
            config[f"{key}_token"] = tokens[token_id]
    if (context := md.get(f"{md.get('general.architecture')}.context_length")) is not None:
        config["model_max_length"] = context
    if (template := md.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    return config
