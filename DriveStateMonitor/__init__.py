"""Drive State Monitor: a per-host daemon that keeps what Kinetic drives announce and test scripts report."""
__version__ = "2.0.0"
