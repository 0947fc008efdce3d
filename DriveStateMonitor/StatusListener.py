#!/usr/bin/env python3
"""Takes status reports on the status port on its own, without a DSM, and prints each one stored as
a JSON line — for checking a test script's reports. --help lists options."""
import os
import sys

if __name__ == "__main__" and not __package__:
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    __package__ = os.path.basename(_here)
    __import__(__package__)

from .status_listener import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
