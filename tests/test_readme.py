"""Every command in the README works as printed: its `$ ` shell lines and its Python blocks run in
order, as a newcomer would, against a DSM on free loopback ports.

Only what a test must not touch is substituted: the default ports (2203, 3110, 3111, 2204) become
free ones, `/tmp/DriveStateMonitor` a temporary run dir, `./runDSM` gets temporary state/log dirs,
`--interfaces lo` and a test multicast group (the simulator that group, and --rounds so it ends),
and `watch` a short --timeout. A check after the substitutions proves no default is left. The DSM
is stopped by its pid at the end, pass or fail; every command has a deadline.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from dsm_harness import ROOT, TEST_GROUP, free_tcp_port, free_udp_port, short_temp_dir, wait_for

README = os.path.join(ROOT, "README.md")
COMMAND_TIMEOUT_S = 60


def readme_examples() -> List[Tuple[str, str]]:
    """("sh", command) for each `$ ` line of a ```sh block, ("python", code) for each ```python
    block, in README order."""
    with open(README) as f:
        text = f.read()
    examples = []
    for language, body in re.findall(r"```(sh|python)\n(.*?)```", text, re.S):
        if language == "python":
            examples.append(("python", body))
        else:
            examples += [("sh", line[2:]) for line in body.splitlines() if line.startswith("$ ")]
    return examples


def free_tcp_ports(count: int) -> List[int]:
    ports: List[int] = []
    while len(ports) < count:  # bounded: free_tcp_port rarely repeats itself
        port = free_tcp_port()
        if port not in ports:
            ports.append(port)
    return ports


def substitute(command: str, env: Dict[str, str]) -> str:
    """The README command with the test's ports and dirs instead of the defaults."""
    command = command.replace("/tmp/DriveStateMonitor", env["run"])
    command = command.replace("localhost 2203", "127.0.0.1 %s" % env["query"])
    command = command.replace("localhost 3111", "127.0.0.1 %s" % env["statserv"])
    command = command.replace("localhost:2203", "127.0.0.1:%s" % env["query"])
    command = command.replace("/tmp/lab.txt", os.path.join(env["logs"], "lab.txt"))
    command = command.replace("localhost:2204", "127.0.0.1:%s" % env["http"])
    command = command.replace("3110", env["status"])
    if command.startswith("./runDSM"):
        command = command.replace("./runDSM", "./runDSM --interfaces lo --query-port %(query)s "
                                  "--status-port %(status)s --statserv-port %(statserv)s "
                                  "--http-port %(http)s --mcast-group %(group)s --mcast-port "
                                  "%(mcast)s --run-dir %(run)s --log-dir %(logs)s --state-dir "
                                  "%(state)s" % env, 1)
    if command.startswith("./stopDSM"):
        command += " --run-dir %(run)s" % env
    if command.startswith("DriveStateMonitor/dsmctl.py"):
        command = command.replace(
            "DriveStateMonitor/dsmctl.py", "DriveStateMonitor/dsmctl.py --host 127.0.0.1 "
            "--query-port %(query)s --status-port %(status)s --server %(run)s/statserv.sock"
            % env, 1)
        if " simulate" in command:
            command += " --mcast-group %(group)s --mcast-port %(mcast)s --interval 0.1 " \
                       "--rounds 10" % env
        if " watch " in command:
            command = re.sub(r"--timeout \d+", "--timeout 1", command)
    return command


@pytest.fixture
def readme_env():
    base = short_temp_dir()
    query, status, statserv, http = free_tcp_ports(4)
    env = {"query": str(query), "status": str(status), "statserv": str(statserv),
           "http": str(http), "mcast": str(free_udp_port()), "group": TEST_GROUP,
           "run": os.path.join(base, "run"), "logs": os.path.join(base, "logs"),
           "state": os.path.join(base, "state")}
    yield env
    try:
        with open(os.path.join(env["run"], "dsm.json")) as f:
            os.kill(json.load(f)["pid"], signal.SIGKILL)
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(base, ignore_errors=True)


def test_the_readme_is_a_first_day_under_200_lines_linking_the_reference():
    with open(README) as f:
        lines = f.read().splitlines()
    assert len(lines) < 200
    text = "\n".join(lines)
    for doc in ("docs/protocol.md", "docs/status-server.md", "docs/development.md"):
        assert "(%s)" % doc in text and os.path.exists(os.path.join(ROOT, doc)), doc
    assert text.index("## The two commands") < text.index("## The first five minutes") < \
        text.index("## Everyday tasks")
    # .ci/run runs exactly the README's test command.
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert ci[-1] == "tests/runTests" and ("sh", "tests/runTests") in readme_examples()


@pytest.mark.skipif(shutil.which("nc") is None or shutil.which("curl") is None,
                    reason="the README uses nc and curl (apt-get install netcat-openbsd curl)")
def test_every_readme_command_works_as_printed(readme_env):
    examples = [(kind, text) for kind, text in readme_examples() if text != "tests/runTests"]
    # "Everyday tasks" begin "with the DSM running (./runDSM) and drives heard (... the simulator
    # of step 2)", after the first five minutes ended with ./stopDSM: do just that.
    stop = examples.index(("sh", "./stopDSM"))
    simulate = next(example for example in examples if " simulate " in example[1])
    examples[stop + 1:stop + 1] = [("sh", "./runDSM"), simulate]
    assert len(examples) > 15
    outputs = []
    for kind, text in examples:
        if kind == "python":
            code = text.replace('("localhost", 3110)', '("127.0.0.1", %s)' % readme_env["status"])
            assert code != text, "the Python example no longer reports to port 3110"
            command = [sys.executable, "-c", code]
            shown = code
        else:
            shown = substitute(text, readme_env)
            # Ports as whole numbers: a free port such as 31107 holds "3110" and is not the default.
            assert re.search(r"(?<!\d)(2203|3110|3111|2204)(?!\d)", shown) is None, shown
            assert "/tmp/DriveStateMonitor" not in shown, shown
            command = ["bash", "-c", shown]
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S,
                              universal_newlines=True)
        assert done.returncode == 0, (shown, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (shown, done.stderr)
        outputs.append((text, done.stdout))
        if kind == "sh" and " simulate" in text:
            # The simulator's drives are in the DSM before the next command looks.
            wait_for(lambda: b"Z84G7YVX" in subprocess.run(
                ["bash", "-c", "printf m | nc -U %s/dsm.sock" % readme_env["run"]],
                stdout=subprocess.PIPE, timeout=10).stdout, 10, "the simulated drives in m")
    by_command = dict(outputs[:stop + 1])
    assert "next: " in by_command["./runDSM"]
    table = by_command["DriveStateMonitor/dsmctl.py m"].splitlines()
    assert table[0].split()[:3] == ["SERIAL", "STATE", "MODEL"] and len(table) == 6
    assert "PASS" in by_command["DriveStateMonitor/dsmctl.py s Z84G7YVX"]
    assert "stopped" in by_command["./stopDSM"]
    lab_table = dict(outputs)["DriveStateMonitor/dsmctl.py m --lab /tmp/lab.txt"].splitlines()
    assert lab_table[0].split()[:2] == ["HOST", "SERIAL"] and "bench-a" in lab_table[1]
    everyday = dict(outputs[stop + 1:])
    assert "already running" not in everyday["./runDSM"]  # the first one really stopped
    assert everyday["printf m | nc localhost 2203"].endswith("\x04")
    # The Status Server one-liner ends (LOGOFF) with the value, as dsmctl.py get prints it.
    version = everyday["printf 'GET /dsm/version\\nLOGOFF\\n' | nc localhost 3111"]
    printed = everyday["DriveStateMonitor/dsmctl.py get /dsm/version"].strip()
    assert version.strip() == '. "%s"' % printed and printed
    history = json.loads(everyday["echo s | nc -U /tmp/DriveStateMonitor/dsm.sock"][:-1])
    statuses = [entry["status"] for entry in history["Z84G7YVX"]]
    assert "PASS" in statuses and statuses[-1] == "002"  # kept across the restart; send-status
