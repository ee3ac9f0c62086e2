import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, one_line_error, run_cli
from livesum.config import (
    DEFAULT_PROFILE, OPTION_ENV_VARS, PROFILES, ConfigError, Settings, load_settings, nest, parse_assignments, profile_names,
)


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'llm': {'engine': {'window': 1}}} -> {'llm.engine.window': 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_default_profile_writes_out_every_built_in_default() -> None:
    """The defaults live in config.py; the default profile must not drift from them, key by key
    (keys whose default is unset cannot be written in TOML)."""
    built_in = leaves(Settings().model_dump(mode="json"))
    with (PROFILES / f"{DEFAULT_PROFILE}.toml").open("rb") as handle:
        written = leaves(tomllib.load(handle))
    assert written == {key: value for key, value in built_in.items() if value is not None}
    assert load_settings(environ={}) == Settings()


def test_repo_configs_are_the_package_profiles() -> None:
    """configs/ (the repo layout) points at the profiles the package ships: one copy of each."""
    shipped = {name: (PROFILES / f"{name}.toml") for name in profile_names()}
    assert set(shipped) == {"default", "cpu", "gpu"}
    assert sorted(path.stem for path in (REPO / "configs").glob("*.toml")) == sorted(shipped)
    for name, profile in shipped.items():
        assert (REPO / "configs" / f"{name}.toml").resolve() == Path(str(profile)).resolve()


@pytest.mark.parametrize("profile", ["default", "cpu", "gpu"])
def test_every_shipped_profile_is_valid(profile: str) -> None:
    load_settings(profile, environ={})


def test_profiles_pick_their_models_by_name_or_path() -> None:
    assert load_settings("cpu", environ={}).asr.model == "tiny.en"
    assert load_settings(REPO / "configs" / "cpu.toml", environ={}) == load_settings("cpu", environ={})
    gpu = load_settings("gpu", environ={})
    assert (gpu.llm.model, gpu.asr.compute_type) == ("qwen2.5-coder-1.5b", "float16")
    with pytest.raises(ConfigError, match=r"unknown profile 'cpuu': use one of cpu, default, gpu"):
        load_settings("cpuu", environ={})


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
    with pytest.raises(ConfigError, match=r"environment: unknown key 'llmm'"):
        load_settings(environ={"LIVESUM_LLMM__WINDOW": "3"})
    with pytest.raises(ConfigError, match=r"unknown key 'llmm'"):
        load_settings(overrides={"llmm": {"x": 1}}, environ={})


def test_variables_of_cli_options_are_not_config_keys() -> None:
    """`LIVESUM_TOKEN` feeds `--token`; the settings loader must leave it alone (it exited 2)."""
    settings = load_settings(environ={"LIVESUM_TOKEN": "abc", "LIVESUM_SERVER__PORT": "9000", "OTHER": "x"})
    assert settings.server.port == 9000
    assert settings.server.token is None  # the option, not the loader, turns it into server.token


def test_every_cli_envvar_is_known_to_the_loader() -> None:
    import typer.main

    from livesum.cli import app

    def envvars(command) -> set[str]:
        found = {name for param in command.params for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])}
        for sub in getattr(command, "commands", {}).values():
            found |= envvars(sub)
        return found

    used = envvars(typer.main.get_command(app))
    assert "LIVESUM_TOKEN" in used
    assert used <= OPTION_ENV_VARS


def cli_env(**variables: str) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("LIVESUM_")}
    return {**environ, **variables}


def test_token_variable_and_env_typo_through_the_cli() -> None:
    ok = run_cli("config", "--config", "cpu", env=cli_env(LIVESUM_TOKEN="abc", LIVESUM_LLM__ENGINE__WINDOW="300"))
    assert ok.returncode == 0, ok.stderr
    assert '"window": 300' in ok.stdout
    typo = run_cli("config", env=cli_env(LIVESUM_LLM__WINDOWW="3"))
    assert typo.returncode == 2
    assert one_line_error(typo) == "livesum: error: environment: unknown key 'llm.windoww'"


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


def test_set_assignments_parse_lists_nesting_and_null() -> None:
    assert parse_assignments(["llm.engine.window=64", 'output.formats=["md","txt"]', "asr.language=null"]) == {
        "llm": {"engine": {"window": "64"}},
        "output": {"formats": ["md", "txt"]},
        "asr": {"language": None},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["window"])
    with pytest.raises(ConfigError, match=r"--set: unknown key 'windw'"):
        parse_assignments(["windw=3"])
    with pytest.raises(ConfigError, match=r"--set: cannot parse output.formats=md \(a list is a JSON array"):
        parse_assignments(["output.formats=md"])


def test_environment_and_set_read_values_alike() -> None:
    environ = {"LIVESUM_OUTPUT__FORMATS": '["md"]', "LIVESUM_ASR__LANGUAGE": "null"}
    from_env = load_settings(environ=environ)
    from_set = load_settings(overrides=parse_assignments(['output.formats=["md"]', "asr.language=null"]), environ={})
    assert from_env == from_set
    assert (from_env.output.formats, from_env.asr.language) == (["md"], None)


def test_dotted_keys_nest_into_sections() -> None:
    """The one parser of dotted keys: CLI flags and a websocket client's overrides."""
    assert nest({"llm.engine.window": 64, "llm.summary_every_seconds": 8, "cache_dir": "/tmp"}) == {
        "llm": {"engine": {"window": 64}, "summary_every_seconds": 8},
        "cache_dir": "/tmp",
    }


def test_cores_are_shared_between_whisper_and_the_lm() -> None:
    from livesum.compute import CoreShare

    share = CoreShare(cores=2)
    assert share.asr_threads() == 1 and share.lm_threads() == 2  # the LM alone takes both
    with share.recognition():
        assert share.recognizing and share.lm_threads() == 1  # Whisper is running on the other core
    assert share.lm_threads() == 2
    share.configure(lm_on_cpu=False)  # LM off, or on a GPU: Whisper takes every core
    assert share.asr_threads() == 2 and share.asr_threads(configured=3) == 3
    share.configure(lm_on_cpu=True, lm_threads=2)
    with share.recognition():
        assert share.lm_threads() == 2  # llm.threads set: as configured
    assert CoreShare(cores=8).asr_threads() == 4
    share = CoreShare(cores=2)
    assert share.asr_workers(share.asr_threads()) == 2  # two streams recognise side by side, a core each
    with share.recognition(), share.recognition():
        assert share.lm_threads() == 1  # both cores are Whisper's now: the LM still gets a thread


def test_recognition_holds_back_while_a_question_waits_for_its_prompt_and_is_never_starved() -> None:
    import threading

    from livesum.compute import CoreShare

    share = CoreShare(cores=2)
    share.configure(lm_on_cpu=True, question_hold_seconds=60)
    share.hold_recognition(True)
    started, release = threading.Event(), threading.Event()

    def recognize() -> None:
        with share.recognition():
            started.set()
            release.wait(30)

    first = threading.Thread(target=recognize)
    first.start()
    assert not started.wait(0.3)  # held back: the question's prompt has both cores
    assert share.lm_threads() == 2 and not share.recognizing
    share.hold_recognition(False)  # the answer began
    assert started.wait(30) and share.lm_threads() == 1
    release.set()
    first.join(30)
    share.hold_recognition(True)  # another question at once: the call after a hold runs without waiting
    started.clear()
    second = threading.Thread(target=recognize)
    second.start()
    assert started.wait(30)  # not the 60 s of a hold
    second.join(30)
    share.hold_recognition(False)
    release.clear()
    third = threading.Thread(target=recognize)  # a call already running when a question's prompt is due
    started.clear()
    third.start()
    assert started.wait(30)
    cleared = threading.Event()
    clearing = threading.Thread(target=lambda: (share.clear_for_question(), cleared.set()))
    clearing.start()
    assert not cleared.wait(0.3)  # the prompt's step waits for the running call to end...
    release.set()
    assert cleared.wait(30) and share.lm_threads() == 2  # ...then has both cores
    third.join(30)
    clearing.join(30)
    off = CoreShare(cores=2)
    off.configure(lm_on_cpu=False, question_hold_seconds=60)  # the LM on a GPU: nothing to give it
    off.hold_recognition(True)
    with off.recognition():
        assert off.recognizing
        off.clear_for_question()  # returns at once


def test_a_worker_shares_out_only_the_cores_it_reserved() -> None:
    from livesum.compute import CoreShare, cpu_cores

    share = CoreShare(cores=cpu_cores())
    share.reserve(1)  # a Ray batch worker with one CPU on a bigger machine: one thread for each pool, never both on all
    assert share.asr_threads() == 1 and share.asr_workers(1) == 1 and share.lm_threads() == 1
    with share.recognition():
        assert share.lm_threads() == 1
    share.reserve(10_000)  # more than the process may run on: what it may run on
    assert share.cores == cpu_cores()
