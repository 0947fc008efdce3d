#!/usr/bin/env python3
"""Listens to the drives' multicast announcements on its own (beside a running DSM or not) for a
while, then prints everything heard as JSON, in the `m` reply's shape. --help lists options."""
import os
import sys

if __name__ == "__main__" and not __package__:
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    __package__ = os.path.basename(_here)
    __import__(__package__)

from .multicast_listener import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
