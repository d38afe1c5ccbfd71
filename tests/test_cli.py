"""The command line surface: help, version, and clean Error:/Hint: failures."""

from __future__ import annotations

import subprocess

import pytest
from conftest import TINY_TRAIN, assert_user_error, rtk_command

import toolkit

def _commands() -> list[str]:
    from toolkit.cli import main

    return sorted(main.commands)


COMMANDS = _commands()  # from the Click group: a new command cannot be missed here


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout
    assert len(COMMANDS) >= 13  # inspect ... report: the group is not accidentally empty


def test_version_matches_package(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"rtk, version {toolkit.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: main {command} [OPTIONS]")


NOT_A_RUN = "is not an rtk run directory"
# One user error per command, each found before any slow work: (arguments, a fragment shown).
# {empty}: an empty folder; {file}: a plain file; {missing}: a path that does not exist.
ERRORS = {
    "bench": (["{empty}", "--backends", "nope"], "Unknown backend(s): nope."),
    "deploy": (["{empty}"], "is neither an rtk run nor a Triton model repository"),
    "eval": (["{empty}"], NOT_A_RUN),
    "export": (["{empty}"], NOT_A_RUN),
    "finetune": (["{missing}", "--out", "{empty}/run", *TINY_TRAIN], "is not a folder"),
    "inspect": (["{missing}"], "is not a folder"),
    "predict": (["{empty}", "{file}"], NOT_A_RUN),
    "ready": (["127.0.0.1:1"], "does not answer its model index"),
    "report": (["{empty}"], NOT_A_RUN),
    "sample-data": (["{file}"], "is a file, not a folder"),
    "serve": (["{missing}"], "No model repository at"),
    "triton": (["{empty}", "--repo", "{empty}/repo"], NOT_A_RUN),
    "triton-env": (["{missing}", "--check"], "No Python backend environment"),
    "tune": (["{empty}", "--p99-ms", "100"], NOT_A_RUN),
}


def test_every_command_has_an_error_case():
    assert sorted(ERRORS) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_command_error_is_clean(cli, tmp_path, command):
    """Error: and Hint: lines, a non-zero exit code, no traceback."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"")
    where = {"empty": tmp_path / "empty", "file": tmp_path / "file.png",
             "missing": tmp_path / "missing"}
    args, fragment = ERRORS[command]
    result = cli(command, *[a.format(**where) for a in args])
    assert_user_error(result, fragment)


def test_finetune_help_shows_card_ranges(cli):
    text = cli("finetune", "--help").stdout
    assert "range 2 to 64" in text  # --batch-size
    assert "range 1 to 30" in text  # --epochs
    assert "range 1e-05 to 0.0005" in text  # --lr


@pytest.mark.parametrize("flag, value, shown_range", [
    ("--batch-size", "1", "2 to 64"),
    ("--batch-size", "65", "2 to 64"),
    ("--epochs", "31", "1 to 30"),
    ("--epochs", "0", "1 to 30"),
    ("--lr", "1e-3", "1e-05 to 0.0005"),
    ("--eval-steps", "0", "1 to 30"),
])
def test_out_of_range_option_is_a_clean_error(cli, tiny_data, tmp_path, flag, value, shown_range):
    out = tmp_path / "run"
    result = cli("finetune", tiny_data, "--out", out, flag, value, "--weights", "none",
                 "--device", "cpu", "--no-progress")
    assert_user_error(result, flag, shown_range)
    assert result.exit_code == 2
    assert not out.exists()  # refused before any work


def test_folder_without_class_subfolders_is_a_clean_error(cli, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    result = cli("inspect", tmp_path / "flat")
    assert_user_error(result, "no class subfolders")


def test_unknown_arch_is_a_clean_error(cli, tiny_data, tmp_path):
    result = cli("finetune", tiny_data, "--out", tmp_path / "run", *TINY_TRAIN, "--arch", "resnet5")
    assert_user_error(result, "Unknown --arch 'resnet5'")


def test_module_entry_point_runs_the_cli():
    """`python -m toolkit` is the CLI (torchrun -m toolkit relies on it)."""
    proc = subprocess.run([*rtk_command(), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rtk, version {toolkit.__version__}"
