"""livesum as a wheel, not as this checkout: the profiles ship inside the package, so a non-editable
install run from any folder has the same settings as the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO
from livesum import __version__


def run(command: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_wheel_install_has_the_profiles_and_runs_outside_the_repo(tmp_path: Path) -> None:
    # Build from a copy of what a wheel is made of, so nothing is written into the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO / "livesum", source / "livesum", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source], tmp_path)
    (wheel,) = wheels.glob("livesum-*.whl")
    assert wheel.name.startswith(f"livesum-{__version__}-")

    # A fresh venv that sees this environment's packages (torch, pydantic...) through a .pth line, so
    # only livesum itself is installed; the .pth files of this environment (an editable livesum) are
    # not run from there, so the wheel's copy is the only livesum it can import.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "parent-environment.pth").write_text("\n".join(ours) + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--no-warn-script-location", wheel], tmp_path)

    elsewhere = tmp_path / "elsewhere"  # no configs/ folder, no checkout on the path
    elsewhere.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LIVESUM_") and name != "PYTHONPATH"}
    found = run([python, "-c", "import livesum; print(livesum.__file__)"], elsewhere, env).stdout.strip()
    assert Path(found).is_relative_to(venv)
    livesum = venv / "bin" / "livesum"
    settings = json.loads(run([livesum, "config", "--config", "cpu"], elsewhere, env).stdout)
    assert (settings["asr"]["model"], settings["llm"]["model"], settings["llm"]["engine"]["window"]) == ("tiny.en", "smollm2-135m", 768)
    defaults = json.loads(run([livesum, "config"], elsewhere, env).stdout)
    assert (defaults["asr"]["model"], defaults["llm"]["model"]) == ("base", "qwen2.5-coder-1.5b")
    assert run([livesum, "--version"], elsewhere, env).stdout == f"livesum {__version__}\n"
    # The browser page `livesum serve` serves is package data too: the installed HTTP routes find every file.
    shipped = run([python, "-c", "from livesum.server.http import WEB_DIR; print(' '.join(sorted(p.name for p in WEB_DIR.iterdir())))"],
                  elsewhere, env).stdout.split()
    assert {"index.html", "app.js", "capture.js", "worklet.js", "style.css"} <= set(shipped)
