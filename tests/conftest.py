"""Puts the repository root on sys.path (however pytest is started) and provides the DSM fixtures."""
import os
import subprocess
import sys
from typing import List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dsm_harness import DsmFactory  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Hypothesis's too_slow check times how fast this host draws examples, not what the code does: a
# loaded CI machine can fail it on a strategy that is fine. Each @given test sets its own example
# count and deadline=None; the checks about the strategies themselves stay on. print_blob: a
# failure prints the @reproduce_failure line, so a CI log is enough to replay it.
settings.register_profile("dsm", suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("dsm")


@pytest.fixture
def dsm_factory():
    """Starts DSM processes for a test and stops every one of them by pid afterwards."""
    factory = DsmFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def dsm(dsm_factory):
    """One running DSM on free loopback ports."""
    return dsm_factory.start()


@pytest.fixture
def scripts():
    """runDSM and stopDSM with a temporary run, log and state dir (test_scripts.Scripts); every DSM
    they started is stopped afterwards, pass or fail."""
    from test_scripts import Scripts
    s = Scripts()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def procs():
    """Processes a test starts itself; each is stopped by its pid afterwards."""
    started: List[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
