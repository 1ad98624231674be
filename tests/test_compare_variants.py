"""`rasft-mlx compare --variant LABEL=RECIPE`: an arm trained with a recipe of its own, paired with
every mode on the same test problems; variants that cannot pair, bad labels and changed variant
recipes are refused."""

from __future__ import annotations

import json

import pytest
import yaml
from test_compare import write_recipe
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.experiments.compare import CompareError, check_variant_recipes
from rasft_mlx.experiments.compare_arms import (
    Arm,
    load_variants,
    pairing_differences,
    variant_cap,
)
from rasft_mlx.recipe.config import load_recipe

runner = CliRunner()


def write_variant(path, main_path, changes: dict):
    """The main recipe with `changes` ({"section.key": value}, None removes the key)."""
    recipe = yaml.safe_load(main_path.read_text())
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        target = recipe
        for section in sections:
            target = target.setdefault(section, {})
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


AUTHORS = {  # RASFT under the authors' protocol, its eval and rollouts kept to the tiny test's
    "protocol": "authors",
    "training.mode": "rasft",
    "training.epochs": None,  # the authors' schedule is one pass
    "training.warmup_steps": None,
    "training.seed": 42,  # the comparison's seeds apply, not the variant's own
    "eval.samples": 1,
    "eval.max_new_tokens": 8,
    "rollout.max_new_tokens": 8,
    "rasft.calibration_size": 16,
}


def test_a_variant_arm_trains_and_pairs_with_every_mode(tiny_llama_dir, tmp_path):
    main = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    variant = write_variant(tmp_path / "authors.yaml", main, AUTHORS)
    args = ["compare", str(main), "--modes", "sft,dft", "--seeds", "1"]
    args += ["--variant", f"rasft-authors={variant}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "compare-test"
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["modes"] == ["sft", "dft"]
    arms = {a["arm"]: a for a in results["arms"]}
    assert list(arms) == ["sft", "dft", "rasft-authors"]
    assert arms["sft"] == {"arm": "sft", "mode": "sft", "recipe": str(main), "variant": False}
    authors = arms["rasft-authors"]
    assert (authors["mode"], authors["recipe"], authors["variant"]) == ("rasft", str(variant), True)
    assert authors["saved_recipe"] == "compare-variant-rasft-authors.yaml"
    assert authors["differences"]["protocol"] == ["project", "authors"]
    assert "training.seed" not in authors["differences"]  # set per run, as for every arm
    # Its runs: its own recipe, the comparison's seed and step cap.
    (run,) = [r for r in results["runs"] if r["arm"] == "rasft-authors"]
    assert (run["mode"], run["seed"]) == ("rasft", 3) and run["run_dir"].endswith("-seed3")
    saved = yaml.safe_load((out / "rasft-authors-seed3" / "recipe.yaml").read_text())
    assert saved["protocol"] == "authors" and saved["rasft"]["schedule"] == "authors"
    assert (saved["training"]["seed"], saved["training"]["max_steps"]) == (3, 4)
    kept = yaml.safe_load((out / "compare-variant-rasft-authors.yaml").read_text())
    assert kept["protocol"] == "authors" and kept["training"]["seed"] == 42
    # Paired with every mode: the reference, and each other mode.
    summary = results["summary"]["rasft-authors"]
    assert summary["runs"] == 1 and summary["paired_vs_sft"]["problems"] == 6
    assert "synthetic-ood" in summary["extra_paired_vs_sft"]
    pairs = {(p["arm"], p["versus"]) for p in results["pairwise"]}
    assert pairs == {("rasft-authors", "dft")}
    assert results["curves"]["rasft-authors"][0]["epoch"] == 0
    # The mechanism gauges of a rasft variant, as for a rasft mode.
    assert run["refreshes"] and list(results["refresh_signal"]) == ["rasft-authors"]
    markdown = (out / "results.md").read_text()
    assert "| rasft-authors | 1 |" in markdown  # the main table
    assert "| rasft-authors | dft | " in markdown  # every pair
    assert "| rasft-authors | 1 | " in markdown.split("## Is the mechanism at work?")[1]
    assert "Variant **rasft-authors**: mode rasft" in markdown and "protocol 'authors'" in markdown
    page = (out / "compare.html").read_text()
    assert "<td>rasft-authors</td>" in page and "Variant rasft-authors: mode rasft" in page
    paired_svg = (out / "figures" / "compare-paired.svg").read_text()
    assert "rasft-authors − sft" in paired_svg and "rasft-authors − dft" in paired_svg
    assert "--variant=rasft-authors=" in results["command"]
    assert "rasft-authors" in result.output  # the console tables

    # Again: every run is reused, the variant's too.
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    again = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in again["runs"]} == {"reused"}

    # A changed variant recipe is refused in this compare dir, naming the file and the key.
    write_variant(variant, variant, {"training.learning_rate": 5e-4})
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "compare-variant-rasft-authors.yaml" in result.output
    assert "training.learning_rate" in result.output


def test_a_variant_that_cannot_pair_is_refused(tiny_llama_dir, tmp_path):
    main_path = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    main = load_recipe(main_path)

    def refused(changes, key):
        path = write_variant(tmp_path / "variant.yaml", main_path, changes)
        with pytest.raises(CompareError) as caught:
            load_variants([f"v={path}"], main, str(main_path))
        assert str(path) in str(caught.value) and key in str(caught.value)

    refused({"data.synthetic.n_test": 7}, "data.synthetic.n_test")
    refused({"data.synthetic.ood_max_level": 3}, "data.synthetic.ood_max_level")
    refused({"data.synthetic.seed": 5}, "data.synthetic.seed")
    refused({"data.synthetic.style_per_line": True}, "data.synthetic.style_per_line")
    refused({"data.test": "synthetic-ood"}, "data.test")
    refused({"eval.extra_sets": []}, "eval.extra_sets")
    refused({"eval.max_new_tokens": 16}, "eval.max_new_tokens")
    refused({"eval.drift_problems": 3}, "eval.drift_problems")
    refused({"data.system_prompt": "Answer."}, "data.system_prompt")
    refused({"model.adapter": str(tmp_path / "other-start")}, "model.adapter")
    refused({"model.dtype": "float16"}, "model.dtype")
    refused({"model.path": str(tmp_path / "other-model")}, "model.path")
    # What only the training side reads may differ, and --set applies to every arm.
    for changes in (
        {"data.synthetic.n_train": 24, "training.learning_rate": 5e-4, "rollout.k": 2},
        {"protocol": "authors", "training.epochs": None, "eval.samples": 1},
        {"eval.before_training": True},  # switched off in every run
    ):
        path = write_variant(tmp_path / "variant.yaml", main_path, changes)
        if changes.get("protocol"):
            path = write_variant(path, path, {"eval.max_new_tokens": 8})
        (arm,) = load_variants([f"ok={path}"], main, str(main_path))
        assert arm.name == "ok" and arm.variant
    longer = load_recipe(main_path, ["eval.max_new_tokens=12"])
    (arm,) = load_variants([f"ok={main_path}"], longer, "main", ["eval.max_new_tokens=12"])
    assert arm.recipe.eval.max_new_tokens == 12
    # A non-synthetic test set: the synthetic settings no longer decide it.
    on_file = write_variant(tmp_path / "file.yaml", main_path, {"data.test": "test.jsonl"})
    on_file = write_variant(on_file, on_file, {"eval.extra_sets": []})
    other = write_variant(tmp_path / "other.yaml", on_file, {"data.synthetic.n_test": 9})
    assert pairing_differences(load_recipe(on_file), load_recipe(other)) == []
    # Through the command line: refused before anything is written.
    variant = write_variant(tmp_path / "variant.yaml", main_path, {"data.synthetic.n_test": 7})
    args = ["compare", str(main_path), "--modes", "sft", "--seeds", "1"]
    result = runner.invoke(app, [*args, "--variant", f"v={variant}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "data.synthetic.n_test" in result.output
    assert str(variant) in result.output and not (tmp_path / "o").exists()


def test_quick_takes_each_variants_quick_sibling(tiny_llama_dir, tmp_path):
    main_path = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    main = load_recipe(main_path)
    variant = write_variant(tmp_path / "authors.yaml", main_path, {"training.epochs": 1})
    with pytest.raises(CompareError, match="authors-quick.yaml"):
        load_variants([f"a={variant}"], main, str(main_path), quick=True)
    write_variant(tmp_path / "authors-quick.yaml", main_path, {"training.epochs": 3})
    (arm,) = load_variants([f"a={variant}"], main, str(main_path), quick=True)
    assert arm.source == str(tmp_path / "authors-quick.yaml")
    assert arm.recipe.training.epochs == 3
    (arm,) = load_variants([f"a={variant}"], main, str(main_path))
    assert arm.recipe.training.epochs == 1


def test_bad_variant_labels_are_refused(tiny_llama_dir, tmp_path):
    main_path = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    main = load_recipe(main_path)
    for spec, message in (
        (f"sft={main_path}", "clashes with a mode name"),
        (f"RASFT={main_path}", "clashes with a mode name"),  # one dir on a case-blind disk
        (f"dft={main_path}", "clashes with a mode name"),  # any mode, listed or not
        (f"a b={main_path}", "must be 1-40 letters"),
        (f"../up={main_path}", "must be 1-40 letters"),
        (f"a|b={main_path}", "must be 1-40 letters"),
        (f".hidden={main_path}", "must be 1-40 letters"),
        (f"{'x' * 41}={main_path}", "must be 1-40 letters"),
        (str(main_path), "expected LABEL=RECIPE.yaml"),
        ("label=", "expected LABEL=RECIPE.yaml"),
    ):
        with pytest.raises(CompareError, match=message):
            load_variants([spec], main, "main")
    with pytest.raises(CompareError, match="another arm's label"):
        load_variants([f"v1={main_path}", f"V1={main_path}"], main, "main")
    assert [a.name for a in load_variants([f"a-1.x_y={main_path}"], main, "main")] == ["a-1.x_y"]
    # run_compare checks the variants a caller built itself, before anything is written.
    from rasft_mlx.experiments.compare import run_compare

    with pytest.raises(CompareError, match="clashes with a mode name"):
        run_compare(main, tmp_path / "o", ("sft",), 1, variants=[Arm("rft", main, "x", True)])
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["compare", str(main_path), "--variant", f"sft={main_path}"])
    assert result.exit_code == 2 and "clashes with a mode name" in result.output


def test_a_changed_variant_recipe_is_refused_on_resume(tiny_llama_dir, tmp_path):
    main_path = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    main = load_recipe(main_path)
    path = write_variant(tmp_path / "variant.yaml", main_path, {"training.learning_rate": 5e-4})
    (arm,) = load_variants([f"fast={path}"], main, "main")
    out = tmp_path / "cmp"
    out.mkdir()
    check_variant_recipes(out, [arm])
    saved = out / "compare-variant-fast.yaml"
    assert load_recipe(saved) == arm.recipe
    check_variant_recipes(out, [arm])  # the same recipe continues
    changed = write_variant(tmp_path / "changed.yaml", path, {"training.learning_rate": 1e-4})
    (other,) = load_variants([f"fast={changed}"], main, "main")
    (new,) = load_variants([f"slow={changed}"], main, "main")
    with pytest.raises(CompareError, match="training.learning_rate") as caught:
        check_variant_recipes(out, [new, other])
    assert str(saved) in str(caught.value) and "'fast'" in str(caught.value)
    assert not (out / "compare-variant-slow.yaml").exists()  # nothing saved when one is refused
    assert load_recipe(saved) == arm.recipe
    check_variant_recipes(out, [new])  # another label is another arm
    assert (out / "compare-variant-slow.yaml").is_file()


def test_a_variant_gets_the_comparisons_step_cap():
    from rasft_mlx.recipe.config import Recipe, TrainingConfig

    def recipe(max_steps):
        return Recipe(training=TrainingConfig(max_steps=max_steps))

    assert variant_cap("steps", 40, recipe(None)) == 40
    assert variant_cap("steps", 40, recipe(25)) == 25
    assert variant_cap("steps", 40, recipe(60)) == 40
    assert variant_cap("epochs", None, recipe(None)) is None
    assert variant_cap("epochs", None, recipe(7)) == 7
