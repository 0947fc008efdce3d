"""setup.py builds the package a user installs: the check tox's own install of the package made on
every run (with the package index), made here per Python, from a copy of the source, offline.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from dsm_harness import ROOT


def test_setup_py_builds_every_module_page_file_and_script_and_the_version(tmp_path):
    pytest.importorskip("setuptools", reason="setuptools (tox.ini's deps) builds the package")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), str(source / name))
    shutil.copytree(os.path.join(ROOT, "DriveStateMonitor"), str(source / "DriveStateMonitor"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # `setup.py build` is the step of every install that reads setup.py's lists (a wheel build
    # would also need the wheel package with setuptools older than 70.1).
    built = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build", "--build-base", str(tmp_path / "build")],
        cwd=str(source), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=300)
    assert built.returncode == 0, built.stdout
    names = set()
    for folder, _, files in os.walk(str(tmp_path / "build")):
        for name in files:
            names.add(os.path.relpath(os.path.join(folder, name), str(tmp_path / "build")))
    package = os.path.join(ROOT, "DriveStateMonitor")
    for module in os.listdir(package):
        if module.endswith(".py"):
            assert os.path.join("lib", "DriveStateMonitor", module) in names
    for folder in ("web", "systemd", "prometheus"):
        for name in os.listdir(os.path.join(package, folder)):
            if os.path.isfile(os.path.join(package, folder, name)):
                assert os.path.join("lib", "DriveStateMonitor", folder, name) in names
    assert {name.rsplit("/", 1)[-1] for name in names if name.startswith("scripts-")} == {
        "runDSM", "stopDSM"}
    with open(os.path.join(package, "__init__.py")) as f:
        version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
    asked = subprocess.run([sys.executable, "setup.py", "--version"], cwd=str(source),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=60)
    assert asked.stdout.strip().splitlines()[-1] == version, asked.stdout
