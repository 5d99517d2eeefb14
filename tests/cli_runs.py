"""`python cli.py ARGS` in a child process, as a user runs it, for the tests of the commands."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    """The completed process (text stdout and stderr) of cli.py with ARGS, from the checkout's root."""
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
