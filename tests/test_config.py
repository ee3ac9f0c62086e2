from pathlib import Path

import pytest

from livesum.cli import parse_assignments
from livesum.config import REPO_CONFIGS, ConfigError, Settings, load_settings


def test_defaults_file_matches_built_in_defaults() -> None:
    assert load_settings(environ={}) == Settings()


@pytest.mark.parametrize("profile", sorted(REPO_CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_profile_is_valid(profile: Path) -> None:
    load_settings(profile, environ={})


def test_profiles_pick_their_models() -> None:
    assert load_settings(REPO_CONFIGS / "cpu.toml", environ={}).asr.model == "tiny.en"
    gpu = load_settings(REPO_CONFIGS / "gpu.toml", environ={})
    assert (gpu.llm.model, gpu.asr.compute_type) == ("qwen2.5-coder-1.5b", "float16")


def test_layers_apply_in_order(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("[llm.engine]\nwindow = 300\nn_sink = 2\n")
    settings = load_settings(
        profile,
        overrides={"llm": {"engine": {"window": "500"}}},
        environ={"LIVESUM_LLM__ENGINE__WINDOW": "400", "LIVESUM_ASR__MODEL": "tiny.en"},
    )
    assert settings.llm.engine.window == 500  # flag beats env beats file
    assert settings.llm.engine.n_sink == 2  # file beats default
    assert settings.asr.model == "tiny.en"  # env beats default


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    profile = tmp_path / "typo.toml"
    profile.write_text("[llm.engine]\nwindw = 300\n")
    with pytest.raises(ConfigError, match=r"typo.toml: unknown key 'llm.engine.windw'"):
        load_settings(profile, environ={})


def test_unknown_section_and_env_typo_are_named() -> None:
    with pytest.raises(ConfigError, match=r"environment: unknown key 'asr.modle'"):
        load_settings(environ={"LIVESUM_ASR__MODLE": "x"})
    with pytest.raises(ConfigError, match=r"unknown key 'llmm'"):
        load_settings(overrides={"llmm": {"x": 1}}, environ={})


def test_wrong_type_names_key_and_reason() -> None:
    with pytest.raises(ConfigError, match=r"'llm.engine.window': .*integer"):
        load_settings(overrides={"llm": {"engine": {"window": "lots"}}}, environ={})


def test_bad_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[asr\nmodel = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_set_assignments_parse_lists_and_nesting() -> None:
    assert parse_assignments(["llm.engine.window=64", 'output.formats=["md","txt"]']) == {
        "llm": {"engine": {"window": "64"}},
        "output": {"formats": ["md", "txt"]},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["window"])
