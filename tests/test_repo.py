"""The repo's promises to a new user: CI runs the README's test command, configs are documented."""

import re

from conftest import REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text(), flags=re.DOTALL)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    install, tests = readme_commands()[:2]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines
    assert "livesum file samples/" in install
    sample = install.split("livesum file ")[1].split()[0]
    assert (REPO / sample).is_file()
