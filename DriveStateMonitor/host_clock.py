"""The DSM's two clocks: the monotonic one for every deadline, the wall one for what is shown and kept.

Theory of operation
-------------------
The wall clock (time.time) jumps: NTP steps it at boot, a VM resumes hours later, `date -s`. A
deadline measured on it moves with every jump — stepped back, a LIFETIME=5 object outlives its
lifetime by the step and a silent drive reads `alive`; stepped forward a day, a LIFETIME=3600 object
expires at once. etcd keeps lease expiry on the monotonic clock for this reason, and so do we:

- Inside a running DSM every deadline (Status Server lifetimes, MINPERIOD, drive expiry, idle and
  request timeouts, coalescing, the expiry timer) is a CLOCK_MONOTONIC reading (time.monotonic).
- The wall clock is only for what is shown and stored: `last_seen`, STAT's `time`, the snapshot and
  journal records, file names.

The stores stay pure: the daemon reads both clocks once per event and passes a `Moment` as `now`.
A Moment IS the monotonic reading (a float subclass, so every deadline's arithmetic and comparison
is unchanged and yields plain monotonic floats) and carries the wall reading taken with it as
`.wall`. `wall_of(now)` gives the wall reading; a plain float `now` (tests, replays) stands for
both clocks at once, which is what the stores did before.

Across a restart only the wall clock means anything (a new boot restarts CLOCK_MONOTONIC), so
what was stored as a wall time comes back through `restored_moment`: the time that has passed is
taken from the wall clocks, never less than 0 — a stored time in the future (the clock stepped
back since) counts as "just now" — so a restored object's remaining lifetime never exceeds its
LIFETIME, nor a drive's remaining life --drive-lifetime.
"""
from __future__ import annotations

import time
from typing import Callable, Tuple


class Moment(float):
    """A monotonic clock reading (s; its float value) with the wall clock reading taken with it
    (`wall`, epoch s). Arithmetic on it gives plain floats on the monotonic scale."""

    __slots__ = ("wall",)
    wall: float

    def __new__(cls, monotonic: float, wall: float) -> "Moment":
        moment = float.__new__(cls, monotonic)
        moment.wall = wall
        return moment

    def __repr__(self) -> str:
        return "Moment(monotonic=%r, wall=%r)" % (float(self), self.wall)

    def __reduce__(self) -> Tuple[type, Tuple[float, float]]:
        return (Moment, (float(self), self.wall))


def wall_of(now: float) -> float:
    """The wall time (epoch s) of `now`: its `wall` for a Moment, `now` itself for a plain float."""
    return getattr(now, "wall", now)


def restored_moment(stored_wall: float, now: float) -> Moment:
    """A Moment on `now`'s monotonic scale for something that happened at `stored_wall` (epoch s,
    read back from disk): as long ago as the wall clocks say, and never in the future, so a
    deadline computed from it ends no later than now + its lifetime. Its wall stays `stored_wall`
    (what is shown)."""
    elapsed = max(0.0, wall_of(now) - stored_wall)
    return Moment(float(now) - elapsed, stored_wall)


def wall_deadline(deadline: float, now: float) -> float:
    """A monotonic `deadline` as the wall time (epoch s) it falls at, seen from `now`, for storing."""
    return wall_of(now) + (deadline - float(now))


def monotonic_deadline(stored_deadline: float, lifetime: float, now: float) -> float:
    """A stored wall `stored_deadline` (epoch s) on `now`'s monotonic scale, its remaining time
    never more than `lifetime` (s; 0 or less: not capped)."""
    remaining = stored_deadline - wall_of(now)
    if lifetime > 0:
        remaining = min(remaining, lifetime)
    return float(now) + remaining


class HostClock:
    """Reads both clocks; `monotonic` and `wall` are injectable (tests step the wall one)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.monotonic = monotonic
        self.wall = wall

    def __call__(self) -> Moment:
        """Now, as a Moment. Called once per datagram: Moment.__new__'s Python frame skipped."""
        moment = _new_float(Moment, self.monotonic())
        moment.wall = self.wall()
        return moment


_new_float = float.__new__
