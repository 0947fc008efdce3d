#!/usr/bin/env python3
"""Runs the Drive State Monitor in the foreground (runDSM starts it detached). --help lists options."""
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (`python3 DriveStateMonitor/DriveStateMonitor.py`): make this folder importable as
    # its package so the folder alone, copied anywhere, runs (PEP 366).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    __package__ = os.path.basename(_here)
    __import__(__package__)

from .daemon import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
