"""Installs the Drive State Monitor package and its scripts (standard library only at run time)."""
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "DriveStateMonitor", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="DriveStateMonitor",
    version=VERSION,
    description="Per-host daemon that keeps Kinetic drive announcements and test-script statuses",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=["DriveStateMonitor"],
    package_data={"DriveStateMonitor": ["web/*", "systemd/*", "prometheus/*"]},
    scripts=["DriveStateMonitor/runDSM", "DriveStateMonitor/stopDSM"],
    python_requires=">=3.8",
    extras_require={"test": ["pytest", "hypothesis", "prometheus_client", "pyyaml", "setuptools"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
