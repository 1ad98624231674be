"""`rasft-mlx export`: mlx-lm, PEFT and fused exports round-trip through the real clients; Hub push."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from rich.console import Console
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.commands.train import run_training
from rasft_mlx.export.formats import ExportError, export_run
from rasft_mlx.export.hub import HubError, push_folder
from rasft_mlx.export.model_card import PAPER_CITATION
from rasft_mlx.models.adapters import apply_adapters, load_adapters_into, save_adapters
from rasft_mlx.models.loading import load_model
from rasft_mlx.recipe.config import load_recipe, recipe_from_dict, save_recipe

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
TOKENS = [[1, 5, 9, 23, 42, 77, 100, 150, 200, 250, 31, 64]]
TOLERANCE = 1e-4
runner = CliRunner()


def recipe_dict(model_dir: Path, **lora) -> dict:
    return {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0, "num_layers": 1, **lora},
        "training": {"mode": "sft", "batch_size": 8, "learning_rate": 2e-2, "warmup_steps": 0},
        "eval": {"max_new_tokens": 8},
        "output": {"name": "export-test"},
    }


def relative_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(a).max())


def mlx_logits(model) -> np.ndarray:
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def torch_logits(model) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float().numpy()


def own_logits(run_dir: Path) -> np.ndarray:
    """(a) rasft-mlx's own loading: the recipe's model + the run's adapters."""
    loaded = load_model(load_recipe(run_dir / "recipe.yaml").model)
    load_adapters_into(loaded.model, run_dir / "adapters")
    return mlx_logits(loaded.model)


def _base(run_dir: Path) -> str:
    return json.loads((run_dir / "adapters" / "adapter_config.json").read_text())["model"]


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A real (tiny) sft run: 2 steps through run_training, last layer adapted, eval included."""
    run_dir = tmp_path_factory.mktemp("lora-run") / "run"
    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir))
    run_training(recipe, run_dir, Console(quiet=True))
    return run_dir


@pytest.fixture(scope="module")
def dora_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """DoRA adapters with random non-zero B and perturbed magnitudes, saved like the trainer does."""
    run_dir = tmp_path_factory.mktemp("dora-run") / "run"
    keys = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir, type="dora", num_layers=-1, keys=keys))
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    rng = np.random.default_rng(0)
    updates = []
    for name, value in tree_flatten(loaded.model.trainable_parameters()):
        noise = mx.array(rng.normal(size=value.shape).astype(np.float32))
        updates.append((name, value * (1 + 0.2 * noise) if name.endswith(".m") else 0.05 * noise))
    loaded.model.load_weights(updates, strict=False)
    save_adapters(loaded.model, recipe.lora, recipe.model.path, run_dir / "adapters")
    save_recipe(recipe, run_dir / "recipe.yaml")
    return run_dir


@pytest.fixture(scope="module")
def lora_exports(lora_run, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    return {fmt: export_run(lora_run, fmt, out / fmt).out_dir for fmt in ("mlx", "peft", "fused")}


def test_mlx_export_loads_in_mlx_lm_and_matches(lora_run, lora_exports, tiny_llama_dir):
    export_dir = lora_exports["mlx"]
    assert {"adapters.safetensors", "adapter_config.json", "README.md"} <= {
        p.name for p in export_dir.iterdir()
    }
    own = own_logits(lora_run)
    base = mlx_logits(load(str(tiny_llama_dir))[0])
    assert relative_diff(own, base) > 100 * TOLERANCE  # the adapter really changes the outputs
    model, _ = load(str(tiny_llama_dir), adapter_path=str(export_dir))
    assert relative_diff(own, mlx_logits(model)) < TOLERANCE


def test_fused_export_equals_base_plus_adapter(lora_run, lora_exports):
    fused_dir = lora_exports["fused"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in fused_dir.iterdir()
    }
    model, tokenizer = load(str(fused_dir))
    names = [n for n, _ in tree_flatten(model.parameters())]
    assert not any("lora" in n for n in names)
    assert relative_diff(own_logits(lora_run), mlx_logits(model)) < TOLERANCE
    assert tokenizer.encode("1+2") == load(_base(lora_run))[1].encode("1+2")


def test_fused_export_loads_in_transformers(lora_run, lora_exports):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(lora_exports["fused"]), dtype=torch.float32
    )
    assert relative_diff(own_logits(lora_run), torch_logits(model)) < TOLERANCE


def test_loaded_adapters_have_their_dropout_off(lora_run, tmp_path):
    """Adapters trained with dropout, loaded by rasft-mlx: the same logits on every call, the ones
    mlx-lm's load gives (which switches the model to eval mode too)."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    config_path = run / "adapters" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_parameters"]["dropout"] = 0.5
    config_path.write_text(json.dumps(config))
    first = own_logits(run)
    np.testing.assert_array_equal(own_logits(run), first)
    mlx_lm_model, _ = load(_base(run), adapter_path=str(run / "adapters"))
    np.testing.assert_array_equal(mlx_logits(mlx_lm_model), first)


def test_fused_from_quantized_base(lora_run, tiny_llama_dir, tmp_path):
    """A quantised base: --dequantize gives exactly base + adapter; without it, re-quantised."""
    from mlx_lm import convert

    quantized = tmp_path / "q8"
    convert(str(tiny_llama_dir), str(quantized), quantize=True, q_group_size=32, q_bits=8)
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    recipe = load_recipe(run / "recipe.yaml")
    save_recipe(
        replace(recipe, model=replace(recipe.model, path=str(quantized))), run / "recipe.yaml"
    )
    own = own_logits(run)  # rasft-mlx de-quantises on a CPU
    plain = export_run(run, "fused", tmp_path / "plain", dequantize=True).out_dir
    assert "quantization" not in json.loads((plain / "config.json").read_text())
    assert relative_diff(own, mlx_logits(load(str(plain))[0])) < TOLERANCE
    requantized = export_run(run, "fused", tmp_path / "requantized").out_dir
    assert json.loads((requantized / "config.json").read_text())["quantization"]["bits"] == 8
    assert relative_diff(own, mlx_logits(load(str(requantized))[0])) < 0.05


def peft_logits(base_dir, adapter_dir) -> np.ndarray:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    return torch_logits(model)


def test_peft_export_matches_in_transformers(lora_run, lora_exports, tiny_llama_dir):
    export_dir = lora_exports["peft"]
    config = json.loads((export_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] / config["r"] == 2.0
    assert config["layers_to_transform"] == [1] and "self_attn.q_proj" in config["target_modules"]
    assert config["base_model_name_or_path"] == str(tiny_llama_dir.resolve())
    logits = peft_logits(tiny_llama_dir, export_dir)
    assert relative_diff(own_logits(lora_run), logits) < TOLERANCE


def test_peft_dora_export_matches_in_transformers(dora_run, tiny_llama_dir, tmp_path):
    export_dir = export_run(dora_run, "peft", tmp_path / "peft").out_dir
    config = json.loads((export_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["layers_to_transform"] == [0, 1]
    assert sorted(config["target_modules"]) == [
        "mlp.down_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    ]
    own = own_logits(dora_run)
    assert relative_diff(own, mlx_logits(load(str(tiny_llama_dir))[0])) > 100 * TOLERANCE
    mlx_export = export_run(dora_run, "mlx", tmp_path / "mlx").out_dir
    model, _ = load(str(tiny_llama_dir), adapter_path=str(mlx_export))
    assert relative_diff(own, mlx_logits(model)) < TOLERANCE
    assert relative_diff(own, peft_logits(tiny_llama_dir, export_dir)) < TOLERANCE


def test_card_renders_the_run(lora_run, lora_exports, dora_run, tmp_path):
    summary = json.loads((lora_run / "summary.json").read_text())
    for fmt, export_dir in lora_exports.items():
        card = (export_dir / "README.md").read_text()
        assert f"| optimizer steps | {summary['steps']} |" in card
        assert (
            f"{summary['eval']['pass_at_1']:.3f} on {summary['eval']['problems']} problems" in card
        )
        assert PAPER_CITATION in card and "`sft`" in card and "synthetic" in card
        assert "from mlx_lm import" in card or "mlx-lm ones" in card
        assert ("PeftModel.from_pretrained" in card) == (fmt == "peft"), fmt
        assert "cannot load" not in card  # a full-precision base
    card = (export_run(dora_run, "mlx", tmp_path / "d").out_dir / "README.md").read_text()
    assert "no summary.json" in card and "dora" in card


class FakeApi:
    def __init__(self, error: Exception | None = None):
        self.calls, self.error, self.uploaded = [], error, None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.error is not None:
            raise self.error

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.uploaded = sorted(p.name for p in folder.iterdir())
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return SimpleNamespace(commit_url="https://huggingface.co/me/x/commit/abc")


def test_push_calls_create_repo_and_upload_folder(lora_exports):
    api = FakeApi()
    result = push_folder(lora_exports["peft"], "me/x", private=True, revision="v1", api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"] is True
    upload = api.calls[2][2]
    assert upload["revision"] == "v1" and upload["repo_id"] == "me/x"
    assert api.uploaded == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert result.files == api.uploaded and not result.dry_run
    public = FakeApi()
    push_folder(lora_exports["peft"], "me/x", api=public)  # the namespace's default visibility
    assert public.calls[0][2]["private"] is None and public.calls[1][2]["revision"] is None


def test_push_errors_are_clear_and_claim_nothing(lora_exports, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(status_code=401, headers={}, request=None)
    api = FakeApi(HfHubHTTPError("401 Client Error: Unauthorized", response=response))
    with pytest.raises(HubError, match="not authorised to write to me/x.*no files were committed"):
        push_folder(lora_exports["mlx"], "me/x", api=api)
    assert api.uploaded is None
    with pytest.raises(HubError, match="could not reach.*no files were committed"):
        push_folder(lora_exports["mlx"], "me/x", api=FakeApi(ConnectionError("no route")))
    with pytest.raises(HubError, match="offline mode"):
        push_folder(lora_exports["mlx"], "me/x")  # the real client, offline
    with pytest.raises(HubError, match="not a valid repo id"):
        push_folder(lora_exports["mlx"], "bad id!", api=FakeApi())


def test_cli_export_push_and_dry_run(lora_run, tmp_path, monkeypatch):
    import huggingface_hub

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token: api)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_secret_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    args = ["export", str(lora_run), "--format", "mlx", "--out", str(tmp_path / "e")]
    result = runner.invoke(app, [*args, "--push-to-hub", "me/x", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would upload 3 files" in result.output and "adapters.safetensors" in result.output
    assert api.calls == []
    result = runner.invoke(app, [*args, "--push-to-hub", "me/x", "--private"])
    assert result.exit_code == 0, result.output
    assert "pushed 3 files to https://huggingface.co/me/x" in result.output
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["private"] is True
    assert "hf_secret_token" not in result.output
    assert 'snapshot_download("me/x")' in (tmp_path / "e" / "README.md").read_text().replace(
        "'", '"'
    )


def test_export_errors_and_atomic_output(lora_run, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="expected a run directory"):
        export_run(tmp_path, "mlx")
    with pytest.raises(ExportError, match="--dequantize applies to --format fused"):
        export_run(lora_run, "peft", tmp_path / "p", dequantize=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a rasft-mlx export"):
        export_run(lora_run, "mlx", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    first = export_run(lora_run, "mlx", tmp_path / "out")
    again = export_run(lora_run, "peft", tmp_path / "out")  # replaces an earlier export
    assert again.files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]

    def broken(run, dest):
        (dest / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("rasft_mlx.export.formats.write_peft", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(lora_run, "peft", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]
    assert first.out_dir == again.out_dir
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "gguf"])
    assert result.exit_code == 2 and "--format must be one of mlx, peft, fused" in result.output


# --- a full fine-tune (lora.type full): no adapter, the whole model is exported ----------------


@pytest.fixture(scope="module")
def full_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A real (tiny) sft run with lora.type full, the embeddings frozen."""
    run_dir = tmp_path_factory.mktemp("full-run") / "run"
    data = recipe_dict(tiny_llama_dir, type="full", num_layers=-1, train_embeddings=False)
    data["training"]["learning_rate"] = 1e-3
    run_training(recipe_from_dict(data), run_dir, Console(quiet=True))
    return run_dir


def test_full_run_saves_every_trained_weight_in_mlx_lm_format(full_run, tiny_llama_dir):
    config = json.loads((full_run / "adapters" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "full" and config["train_embeddings"] is False
    saved = mx.load(str(full_run / "adapters" / "adapters.safetensors"))
    base = dict(tree_flatten(load(str(tiny_llama_dir))[0].parameters()))
    assert set(saved) == set(base) - {"model.embed_tokens.weight"}
    for name, value in saved.items():
        assert not mx.array_equal(value, base[name]).item(), f"{name} did not train"


def test_full_run_exports_mlx_and_a_fused_model_transformers_loads(
    full_run, tiny_llama_dir, tmp_path
):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    own = own_logits(full_run)
    assert relative_diff(own, mlx_logits(load(str(tiny_llama_dir))[0])) > 100 * TOLERANCE
    mlx_dir = export_run(full_run, "mlx", tmp_path / "mlx").out_dir
    model, _ = load(str(tiny_llama_dir), adapter_path=str(mlx_dir))
    assert relative_diff(own, mlx_logits(model)) < TOLERANCE
    fused = export_run(full_run, "fused", tmp_path / "fused").out_dir
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in fused.iterdir()
    }
    assert relative_diff(own, mlx_logits(load(str(fused))[0])) < TOLERANCE
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(fused), dtype=torch.float32)
    assert relative_diff(own, torch_logits(hf)) < TOLERANCE
    card = (fused / "README.md").read_text()
    assert "A fully fine-tuned model" in card and "full: every weight" in card
    assert "embeddings frozen" in card and "rank" not in card.split("## Results")[0]
    assert "PEFT has no equivalent" in (mlx_dir / "README.md").read_text()
    api = FakeApi()
    push_folder(fused, "me/full", api=api)  # the Hub push sends the same folder
    assert api.uploaded == sorted(p.name for p in fused.iterdir())


def test_a_peft_export_of_a_full_run_is_refused(full_run, tmp_path):
    with pytest.raises(ExportError, match="full fine-tune .* no PEFT adapter.*--format fused"):
        export_run(full_run, "peft", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
