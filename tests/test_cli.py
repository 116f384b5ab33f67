"""The command line's usage errors: one line on stderr, exit 2, and where to read the help —
never a traceback (typer raises them from its own copy of click)."""

import pytest

from conftest import cocomix

USAGE_ERRORS = [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["--bogus"], "No such option: --bogus"),
    (["generate", "--model", "m", "--prompt", "a", "--max-tokens", "abc"], "--max-tokens"),
    (["pretrain"], "Missing option '--data'"),
    (["sae", "train", "--teacher"], "requires an argument"),
    (["labels", "build", "--k-attr", "x", "--teacher", "t"], "valid integer"),
]


@pytest.mark.parametrize("args,expected", USAGE_ERRORS)
def test_usage_errors_are_one_line_with_exit_2(args, expected):
    r = cocomix(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.stderr
    assert "--help" in lines[0] and "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("args", [[], ["sae"], ["data"]])
def test_a_bare_command_group_prints_its_help(args):
    r = cocomix(*args)
    assert r.returncode == 0 and "Usage:" in r.stdout and r.stderr == ""
