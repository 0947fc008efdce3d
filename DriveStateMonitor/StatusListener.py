#!/usr/bin/env python3
"""Takes status reports on the status port on its own, without a DSM, and prints each one stored as
a JSON line — for checking a test script's reports. --help lists options."""
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file: load this folder as the package "DriveStateMonitor" whatever the folder is
    # called (a copy named DriveStateMonitor-2.0 runs too), so the folder alone runs anywhere.
    import importlib.util
    _here = os.path.dirname(os.path.realpath(__file__))
    _spec = importlib.util.spec_from_file_location(
        "DriveStateMonitor", os.path.join(_here, "__init__.py"), submodule_search_locations=[_here])
    if _spec is None or _spec.loader is None:
        raise ImportError("cannot load the DriveStateMonitor package from %s" % _here)
    sys.modules["DriveStateMonitor"] = _package = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_package)
    __package__ = "DriveStateMonitor"

from .status_listener import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
