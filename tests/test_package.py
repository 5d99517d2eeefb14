"""The distribution installs like a package: one top-level import package, `mcdrop`, and a
`mcdrop` command, built from this checkout and installed non-editable into a fresh venv.

The venv borrows this environment's dependencies through a .pth line (numpy, onnxruntime,
TensorFlow...: installing them again would download gigabytes); the project itself is built into a
wheel and installed with pip, so what lands in site-packages is what users get.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SAMPLE = ROOT / "models" / "samples" / "digit_3.png"
NOT_TOP_LEVEL = ("export", "runtime", "cli", "evaluate", "calibrate", "score", "acquire")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, mcdrop command, site-packages) of a fresh venv with the wheel installed."""
    base = tmp_path_factory.mktemp("package")
    wheels = base / "wheels"
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and in the
    # checkout another process (a second xdist worker) removed build/ files mid-build in CI.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "node_modules",
                                                                "__pycache__", "*.parquet*"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, cwd=base)
    assert build.returncode == 0, build.stderr
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bindir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = bindir / ("python.exe" if sys.platform == "win32" else "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = set(p.name for p in site.iterdir())
    # Directories named in a .pth file join sys.path, but their own .pth files are not run: the
    # editable install of this checkout in the borrowed site-packages stays inactive.
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "borrowed_dependencies.pth").write_text("\n".join(ours) + "\n")
    wheel = next(wheels.glob("mcdrop-*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    added = set(p.name for p in site.iterdir()) - before - {"borrowed_dependencies.pth"}
    return python, bindir / "mcdrop", site, added


def test_only_mcdrop_lands_at_the_top_level(installed):
    _, _, _, added = installed
    assert {name for name in added if not name.endswith(".dist-info")} == {"mcdrop"}
    assert len(added) == 2


def test_mcdrop_command_infers_from_another_folder(installed, tmp_path):
    """The default model ships inside the package, so `mcdrop infer IMAGE` needs no checkout."""
    _, command, _, _ = installed
    done = subprocess.run([command, "infer", SAMPLE, "--json", "--seed", "0"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert Path(document["model"]).parts[-3:] == ("mcdrop", "models", "cnn.onnx")
    assert document["predictions"][0]["measures"]["label_name"] == "3"
    helped = subprocess.run([command, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert all(name in helped.stdout for name in ("export", "infer", "info", "evaluate", "calibrate"))


def test_import_mcdrop_and_nothing_else(installed, tmp_path):
    python, _, site, _ = installed
    script = ("import mcdrop; from mcdrop import MCSession, export_model;"
              "print(mcdrop.__file__, mcdrop.__version__, MCSession.__module__, export_model.__module__)")
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, version, session_module, export_module = done.stdout.split()
    assert Path(where).parent == site / "mcdrop"
    assert (version, session_module, export_module) == ("0.1.0", "mcdrop.runtime.session", "mcdrop.export.pipeline")
    for name in NOT_TOP_LEVEL:
        refused = subprocess.run([python, "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path)
        assert refused.returncode != 0 and "ModuleNotFoundError" in refused.stderr, name


def test_every_module_imports_inside_the_package(installed, tmp_path):
    """A leftover `from runtime.x import ...` would work in a checkout and fail once installed."""
    python, _, _, _ = installed
    script = ("import pkgutil, importlib, mcdrop;"
              "names = [m.name for m in pkgutil.walk_packages(mcdrop.__path__, 'mcdrop.') if m.name != 'mcdrop.cli'];"
              "[importlib.import_module(n) for n in names + ['mcdrop.cli']]; print(len(names))")
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 30


def test_python_cli_py_runs_the_checkout_even_beside_an_installed_copy(installed, tmp_path):
    """`python cli.py` loads the folder it lies in as `mcdrop`, never an installed copy."""
    python, _, _, _ = installed
    done = subprocess.run([python, ROOT / "cli.py", "infer", SAMPLE, "--json", "--seed", "0"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["model"]) == ROOT / "models" / "cnn.onnx"
