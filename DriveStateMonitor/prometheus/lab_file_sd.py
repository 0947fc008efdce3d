#!/usr/bin/env python3
"""lab_file_sd.py: the lab file (docs/lab.md) as a Prometheus file-based service-discovery file.

    lab_file_sd.py [LAB_FILE] [-o dsm-lab.json] [--label lab=building-a ...]

Prometheus scrapes each DSM's /metrics on its HTTP port: every lab line becomes one target
`host:http` (http= on the line, default 2204) with the label `instance` set to the line's name
(name=, default the host as written), so dashboards and alerts say "bench-2", not an address.
LAB_FILE defaults to $DSM_LAB, else ~/.config/dsm/lab, else /etc/dsm/lab. The output is written
atomically (a temporary file renamed over it): Prometheus re-reads it when it changes and never
sees half a file. Without -o it goes to standard output. Run it from cron or after editing the lab
file; prometheus-lab.yml is the scrape config that reads it.

Exit codes: 0 written; 2 a bad lab file (its line number on standard error) or usage error.
"""
import os
import sys

if __name__ == "__main__" and not __package__:
    _package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[0] = os.path.dirname(_package_dir)
    __package__ = os.path.basename(_package_dir) + ".prometheus"
    __import__(os.path.basename(_package_dir))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

from ..lab import LabFileError, LabHost, default_lab_file, read_lab_file  # noqa: E402

EXIT_OK = 0
EXIT_INTERRUPT = 1
EXIT_BAD_INPUT = 2
# Prometheus label names; names starting with __ are reserved for Prometheus itself.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def file_sd_targets(hosts: List[LabHost], labels: Optional[Dict[str, str]] = None
                    ) -> List[Dict[str, Any]]:
    """One file_sd target group per DSM: {"targets": ["host:http"], "labels": {"instance":
    name, ...labels}} (the format of Prometheus's file_sd_configs, JSON flavour)."""
    return [{"targets": [host.http_address], "labels": dict(labels or {}, instance=host.name)}
            for host in hosts]


def _label(text: str) -> Any:
    name, equals, value = text.partition("=")
    if not equals or not LABEL_NAME.match(name) or name.startswith("__") or name == "instance":
        raise argparse.ArgumentTypeError("not NAME=VALUE with a Prometheus label name (not "
                                         "instance, not __...): %r" % text)
    return name, value


def write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".lab_file_sd.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lab_file_sd.py", description=__doc__.split("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab_file", nargs="?", metavar="LAB_FILE",
                        help="the lab file (default $DSM_LAB, else ~/.config/dsm/lab, else "
                             "/etc/dsm/lab)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write here, atomically (default: standard output)")
    parser.add_argument("--label", type=_label, action="append", default=[], metavar="NAME=VALUE",
                        help="a label for every target, such as lab=building-a (repeatable)")
    options = parser.parse_args(argv)
    try:
        path = options.lab_file or default_lab_file()
        if path is None:
            print("lab_file_sd.py: no lab file: name one, or set $DSM_LAB", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            hosts = read_lab_file(path)
        except LabFileError as error:
            print("lab_file_sd.py: %s" % error, file=sys.stderr)
            return EXIT_BAD_INPUT
        text = json.dumps(file_sd_targets(hosts, dict(options.label)), indent=2) + "\n"
        if options.output:
            try:
                write_atomically(options.output, text)
            except OSError as error:
                print("lab_file_sd.py: cannot write %s: %s" % (options.output,
                                                               error.strerror or error),
                      file=sys.stderr)
                return EXIT_BAD_INPUT
        else:
            sys.stdout.write(text)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPT


if __name__ == "__main__":
    sys.exit(main())
