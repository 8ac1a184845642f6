"""The `protonet` entry point: every command it names loads, and --help stays light."""
import subprocess
import sys

import click
import pytest

from protonet.cli import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_loads_under_its_name(name):
    command = cli.get_command(None, name)
    assert isinstance(command, click.Command) and command.name == name


def test_help_lists_every_command_without_importing_torch():
    code = ("import sys; from protonet.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "False"
    listed = [line.split()[0] for line in lines if line.startswith("  ") and line.split()]
    assert sorted(COMMANDS) == [name for name in listed if name in COMMANDS] == sorted(set(listed) & set(COMMANDS))


def test_python_dash_m_protonet_is_protonet():
    run = subprocess.run([sys.executable, "-m", "protonet", "inspect", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "Usage: protonet inspect" in run.stdout


def test_an_unknown_command_is_one_line_and_status_2():
    run = subprocess.run([sys.executable, "-m", "protonet", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "No such command 'no-such-command'" in run.stderr
