"""tests/runTests (the README's test command) finds every installed Python 3.8-3.13, pyenv's included,
runs tox for exactly those, and says which ran, how each did, and which are missing."""
from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import configparser
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from dsm_harness import ROOT


def load_run_tests():
    loader = importlib.machinery.SourceFileLoader("run_tests_script", os.path.join(ROOT, "tests", "runTests"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


run_tests = load_run_tests()


@pytest.mark.parametrize("version", run_tests.VERSIONS)
def test_every_installed_version_is_found_pyenv_included(version):
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    installed = glob.glob(os.path.join(pyenv, "versions", version + ".*", "bin", "python" + version))
    found = run_tests.find_interpreter(version)
    if not installed and found is None:
        pytest.skip("Python %s is not installed here" % version)
    assert found is not None, "Python %s is installed (%s) but was not found" % (version, installed)
    assert run_tests.version_of(found) == version


def test_it_runs_exactly_the_found_versions_and_says_which_ran_and_which_are_missing(
        monkeypatch, capsys):
    found = {"3.8": "/opt/py38/bin/python3.8", "3.11": "/opt/py311/bin/python3.11"}
    monkeypatch.setattr(run_tests, "find_interpreter", found.get)
    monkeypatch.setattr(run_tests, "set_up_tools", lambda: "/repo/.venv-tests/bin/python")
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        with open(command[command.index("--result-json") + 1], "w") as f:
            json.dump({"testenvs": {"py38": {"result": {"success": True}},
                                    "py311": {"result": {"success": False}}}}, f)
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(run_tests.subprocess, "run", fake_run)
    code = run_tests.main(["tests/test_x.py", "-x"])
    out = capsys.readouterr().out
    assert code == 1
    command, = commands
    assert command[:3] == ["/repo/.venv-tests/bin/python", "-m", "tox"]  # the tools venv's tox
    assert command[command.index("-e") + 1] == "py38,py311"
    assert command[command.index("--skip-missing-interpreters") + 1] == "false"
    discover = command[command.index("--discover") + 1:command.index("--")]
    assert discover == [found["3.8"], found["3.11"]]
    assert command[command.index("--") + 1:] == ["tests/test_x.py", "-x"]
    assert "missing (not tested): 3.9, 3.10, 3.12, 3.13" in out
    assert "Python 3.8   passed" in out and "Python 3.11  FAILED" in out
    assert "Python 3.13  missing: not tested" in out


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_alone_prints_the_usage_and_finds_installs_and_runs_nothing(flag, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("--help ran something: %r" % (args,))

    monkeypatch.setattr(run_tests, "find_interpreter", must_not_run)
    monkeypatch.setattr(run_tests, "set_up_tools", must_not_run)
    monkeypatch.setattr(run_tests.subprocess, "run", must_not_run)
    assert run_tests.main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tests/runTests")
    assert "runs nothing" in out and "Exit code" in out


def test_a_whole_run_also_lints_and_a_lint_finding_fails_it(monkeypatch, capsys):
    found = {"3.8": "/opt/py38/bin/python3.8", "3.13": "/opt/py313/bin/python3.13"}
    monkeypatch.setattr(run_tests, "find_interpreter", found.get)
    monkeypatch.setattr(run_tests, "set_up_tools", lambda: "/repo/.venv-tests/bin/python")
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        with open(command[command.index("--result-json") + 1], "w") as f:
            json.dump({"testenvs": {
                "py38": {"result": {"success": True}}, "py313": {"result": {"success": True}},
                "lint": {"result": {"success": False}, "test": [
                    {"retcode": 1,
                     "output": "DriveStateMonitor/x.py:3: error: Item None has no attribute\n"}]}}},
                f)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_tests.subprocess, "run", fake_run)
    assert run_tests.main([]) == 1  # the versions passed; the linters did not
    out = capsys.readouterr().out
    assert commands[0][commands[0].index("-e") + 1] == "py38,py313,lint"
    assert "lint         FAILED" in out
    assert "DriveStateMonitor/x.py:3: error: Item None has no attribute" in out.split(
        "what the linters found")[1]
    # A partial run (arguments for pytest) runs no linter.
    assert run_tests.main(["tests/test_x.py"]) == 0
    assert commands[1][commands[1].index("-e") + 1] == "py38,py313"


def test_a_clean_tox_run_that_skipped_a_version_is_not_success(monkeypatch, capsys):
    monkeypatch.setattr(run_tests, "find_interpreter", {"3.12": "/x/python3.12"}.get)
    monkeypatch.setattr(run_tests, "set_up_tools", lambda: "/repo/.venv-tests/bin/python")

    def fake_run(command, **kwargs):
        with open(command[command.index("--result-json") + 1], "w") as f:
            json.dump({"testenvs": {}}, f)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_tests.subprocess, "run", fake_run)
    assert run_tests.main([]) == 1
    assert "Python 3.12  did not run" in capsys.readouterr().out


def test_a_failed_version_ends_with_what_failed_where_a_cut_log_still_shows_it(
        tmp_path, monkeypatch, capsys):
    # A real pytest run with one failing and one erroring test stands in for tox's py38 command.
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('fixture went wrong')\n\n"
        "def test_fine():\n    pass\n\n"
        "def test_off_by_one():\n    limit = 3\n    assert limit + 1 <= 3, 'over the limit'\n\n"
        "def test_needs_fixture(broken):\n    pass\n\n"
        "from hypothesis import given, settings, strategies as st\n\n"
        "@settings(print_blob=True, database=None)\n@given(st.lists(st.integers()))\n"
        "def test_long_lists(values):\n"
        "    assert len(values) < 3, '\\n'.join('line %d of a long story' % n for n in range(30))\n")
    pytest_run = subprocess.run([run_tests.sys.executable, "-m", "pytest", "-q", "-p",
                                 "no:cacheprovider", str(tmp_path / "test_sample.py")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, cwd=str(tmp_path))
    assert pytest_run.returncode == 1
    monkeypatch.setattr(run_tests, "find_interpreter", {"3.8": "/opt/py38/bin/python3.8"}.get)
    monkeypatch.setattr(run_tests, "set_up_tools", lambda: "/repo/.venv-tests/bin/python")
    real_run = run_tests.subprocess.run

    def fake_tox(command, **kwargs):
        with open(command[command.index("--result-json") + 1], "w") as f:
            json.dump({"testenvs": {"py38": {
                "result": {"success": False},
                "setup": [{"retcode": 0, "output": "installed pytest\n", "err": ""}],
                "test": [{"retcode": 1, "output": pytest_run.stdout, "err": pytest_run.stderr}],
            }}}, f)
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(run_tests.subprocess, "run", fake_tox)
    try:
        assert run_tests.main([]) == 1
    finally:
        monkeypatch.setattr(run_tests.subprocess, "run", real_run)
    out = capsys.readouterr().out
    tail = out[out.index("runTests: results:"):]
    assert "what failed under Python 3.8:" in tail
    assert "test_off_by_one:" in tail and "over the limit" in tail
    assert "test_sample.py:12: AssertionError" in tail
    assert "FAILED test_sample.py::test_off_by_one" in tail
    assert "ERROR test_sample.py::test_needs_fixture" in tail
    assert re.search(r"\n  2 failed, 1 passed, (\d+ warnings?, )?1 error in ", tail), tail
    # 30 lines of message, then hypothesis's example and replay line: the end is kept too
    assert "test_long_lists:" in tail and "@reproduce_failure(" in tail
    # ("Falsifying example:" in older hypothesis, "Failing test case:" in newer)
    assert re.search(r"E       (Falsifying example|Failing test case): test_long_lists\(\n"
                     r"\s+E           values=\[", tail), tail
    assert "line 0 of a long story" in tail
    assert "installed pytest" not in tail  # a setup step that worked is not reported


def test_a_version_that_failed_before_pytest_shows_the_end_of_what_it_printed():
    report = run_tests.failure_report({"setup": [{"retcode": 1, "output": "Collecting x\n",
                                                  "err": "ERROR: No matching distribution\n"}]})
    assert report == ["  Collecting x", "  ERROR: No matching distribution"]
    assert run_tests.failure_report(None) == []


def test_the_suite_runs_hypothesis_without_its_host_speed_check_and_prints_replay_blobs():
    from hypothesis import HealthCheck, settings
    assert HealthCheck.too_slow in settings().suppress_health_check
    assert HealthCheck.filter_too_much not in settings().suppress_health_check
    assert settings().print_blob


def test_tox_is_set_up_once_in_a_venv_of_its_own_never_in_the_python_running_it(
        tmp_path, monkeypatch, capsys):
    venv = str(tmp_path / ".venv-tests")
    python = os.path.join(venv, "bin", "python")
    commands = []

    def fake_run(command, **kwargs):  # stands in for `python -m venv` and pip (the index)
        commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            os.makedirs(os.path.dirname(python))
            os.symlink(sys.executable, python)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_tests.subprocess, "run", fake_run)
    tox_there = []
    monkeypatch.setattr(run_tests, "have_tox", lambda where: where in tox_there)
    assert run_tests.set_up_tools(venv) is None  # pip "installed" it, but tox does not run
    assert commands == [[sys.executable, "-m", "venv", venv],
                        [python, "-m", "pip", "install", "--quiet", "tox>=4"]]
    assert "cannot install tox into %s" % venv in capsys.readouterr().err
    commands.clear()
    tox_there.append(python)
    assert run_tests.set_up_tools(venv) == python
    assert commands == []  # set up: nothing made, nothing installed, no package index


def test_the_tools_venv_is_ignored_by_git_and_tox_builds_no_package_per_run():
    ini = configparser.ConfigParser()
    ini.read(os.path.join(ROOT, "tox.ini"))
    assert ini.getboolean("testenv", "skip_install")  # else an sdist, from the index, every run
    deps = ini.get("testenv", "deps").split()
    assert {"pytest", "hypothesis", "prometheus_client", "pyyaml", "setuptools"} <= set(deps)
    assert run_tests.TOOLS_VENV == os.path.join(ROOT, ".venv-tests")
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")) and \
            not os.path.isfile(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".venv-tests/bin/python"], cwd=ROOT)
    assert ignored.returncode == 0


def test_the_repository_root_holds_only_what_the_docs_name():
    """A stray file (a lab.txt left by trying the README) is caught: every tracked entry at the
    root is named at the start of a line of docs/development.md's layout."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, stdout=subprocess.PIPE,
                            universal_newlines=True, check=True).stdout.split()
    entries = {path.split("/")[0] for path in listed}
    with open(os.path.join(ROOT, "docs", "development.md")) as f:
        layout = f.read().split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in layout.splitlines():
        if line.startswith("    ") and not line.startswith("      "):
            words = re.split(r"\s{2,}", line.strip())[0]
            named.update(word.strip("/").split("/")[0] for word in words.split(", "))
    assert sorted(entries - named - {"README.md"}) == []
