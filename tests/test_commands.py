"""Console scripts: ``egomodel COMMAND`` and ``egosearch COMMAND`` run the same code as
``python -m egomodel.COMMAND`` / ``python -m tuning.COMMAND``, and the README's install puts them on PATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from egomodel import commands as egomodel_commands
from tuning import commands as egosearch_commands

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"egomodel": egomodel_commands, "egosearch": egosearch_commands}


def test_pyproject_declares_both_console_scripts() -> None:
    text = (REPO / "pyproject.toml").read_text()  # tomllib is Python 3.11+; the project supports 3.10
    assert 'egomodel = "egomodel.commands:main"' in text
    assert 'egosearch = "tuning.commands:main"' in text


@pytest.mark.parametrize(("prog", "name"), [(p, n) for p, m in SCRIPTS.items() for n in m.COMMANDS])
def test_every_command_answers_help(prog: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert SCRIPTS[prog].main([name, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_command_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert egosearch_commands.main(["serch"]) == 2
    assert "did you mean 'search'" in capsys.readouterr().err


def test_a_command_error_keeps_its_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same exit status and one-line error as python -m tuning.report."""
    rc = egosearch_commands.main(["report", "--parent", "nope", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("prog", SCRIPTS)
def test_installed_script_lists_its_commands(prog: str) -> None:
    exe = Path(sys.executable).parent / prog
    if not exe.exists():
        pytest.fail(f"{exe} missing: install the project as the README says (pip install -e '.[test]')")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert all(name in out for name in SCRIPTS[prog].COMMANDS)
