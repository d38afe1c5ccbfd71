"""The command line surface: help, version, and clean Error:/Hint: failures."""

from __future__ import annotations

import subprocess

import pytest
from conftest import TINY_TRAIN, assert_user_error, rtk_command

import toolkit

COMMANDS = ["inspect", "finetune", "eval", "predict", "sample-data"]


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_version_matches_package(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"rtk, version {toolkit.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: main {command} [OPTIONS]")


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


def test_missing_data_dir_is_a_clean_error(cli, tmp_path):
    missing = tmp_path / "no_such_folder"
    result = cli("finetune", missing, "--out", tmp_path / "run", *TINY_TRAIN)
    assert_user_error(result, str(missing), "is not a folder")


def test_folder_without_class_subfolders_is_a_clean_error(cli, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    result = cli("inspect", tmp_path / "flat")
    assert_user_error(result, "no class subfolders")


def test_unknown_arch_is_a_clean_error(cli, tiny_data, tmp_path):
    result = cli("finetune", tiny_data, "--out", tmp_path / "run", *TINY_TRAIN, "--arch", "resnet5")
    assert_user_error(result, "Unknown --arch 'resnet5'")


def test_eval_on_a_folder_that_is_not_a_run(cli, tmp_path):
    result = cli("eval", tmp_path)
    assert_user_error(result, "is not an rtk run directory")


def test_module_entry_point_runs_the_cli():
    """`python -m toolkit` is the CLI (torchrun -m toolkit relies on it)."""
    proc = subprocess.run([*rtk_command(), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rtk, version {toolkit.__version__}"
