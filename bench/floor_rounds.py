#!/usr/bin/env python3
"""Announcement CPU against the floor in interleaved rounds (standard library only).

    python3 bench/floor_rounds.py                      6 rounds: the floor and this tree's DSM
    python3 bench/floor_rounds.py --other DIR          ... and the DSM of another checkout DIR
    python3 bench/floor_rounds.py --rounds 3

Scenario 9 of run.py measures the floor and the DSM one after the other, three loads each, so
another process's load that comes or goes between them moves one ratio and not the other; on a
shared host a single full run then moves by more than a 10 % change of the DSM. Here each round
gives the floor, this DSM and (with --other, e.g. `git archive <commit> | tar -x -C DIR`) another
DSM the same two loads back to back — 15,000 new drives at 5,000/s, then 1,000 drives (heard once)
repeated at 10,000/s for 3 s — alternating the order of the two DSMs, and prints each process's
user+system CPU per datagram and its ratio to the floor's, then the medians.

Uses run.py's own DSM, floor and load generator: free loopback ports, group 239.1.2.99, private
temp dirs, every process stopped by its pid at the end, also on an error or Ctrl-C. Needs
../shared/bench/floor_server.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
RATE_NEW, RATE_REPEAT, DURATION, REPEATED_DRIVES = 5000, 10000, 3.0, 1000


def load_bench(root: str, name: str) -> Any:
    """bench/run.py of the checkout at `root` (its DSM starts from that checkout)."""
    path = os.path.join(root, "bench", "run.py")
    sys.path.insert(0, os.path.dirname(path))  # its `import loadgen`, if any
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def announce(bench: Any, target: Any, prefix: str, drives: int, rate: int, duration: float,
             count: int) -> Tuple[float, Dict[str, Any]]:
    """Sends the load; returns (the target's CPU seconds until drained, the sender's result)."""
    cpu0 = target.cpu()
    result = bench.run_loadgens([dict(mode="announce", port=target.mcast_port, group=bench.GROUP,
                                      drives=drives, rate=rate, duration=duration, count=count,
                                      change_every=10 ** 9, prefix=prefix, run="rounds")],
                                timeout=60 + duration)[0]
    bench.wait_cpu_idle(target.pid)
    return target.cpu() - cpu0, result


def one_round(bench: Any, name: str, target: Any, rnd: int) -> Tuple[float, float]:
    """(µs per new drive, µs per repeated datagram) of one target."""
    target.wipe()
    bench.wait_cpu_idle(target.pid)
    prefix = "N%s%d" % (name[0], rnd)
    count = int(RATE_NEW * DURATION)
    cpu, _ = announce(bench, target, prefix, count, RATE_NEW, DURATION, count)
    stored = sum(1 for serial in target.query_json("m") if serial.startswith(prefix))
    new = 1e6 * cpu / max(stored, 1)
    prefix = "P%s%d" % (name[0], rnd)
    announce(bench, target, prefix, REPEATED_DRIVES, RATE_NEW, 2.0, REPEATED_DRIVES)
    cpu, sent = announce(bench, target, prefix, REPEATED_DRIVES, RATE_REPEAT, DURATION,
                         int(RATE_REPEAT * DURATION))
    return new, 1e6 * cpu / max(sent["sent"], 1)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--other", metavar="DIR", help="also run the DSM of this checkout")
    options = parser.parse_args(argv)
    bench = load_bench(os.path.dirname(HERE), "bench_this")
    if not os.path.exists(bench.FLOOR):
        print("skipped: %s not found (needs ../shared)" % bench.FLOOR)
        return 0
    benches = {"floor": bench, "this": bench}
    if options.other:
        benches["other"] = load_bench(os.path.abspath(options.other), "bench_other")
    targets: Dict[str, Any] = {}
    try:
        targets["floor"] = bench.FloorServer()
        targets["this"] = bench.Dsm()
        if options.other:
            targets["other"] = benches["other"].Dsm()
        figures: Dict[str, Dict[str, List[float]]] = {
            name: {"new": [], "repeat": []} for name in targets}
        for rnd in range(options.rounds):
            dsms = [name for name in targets if name != "floor"]
            order = ["floor"] + (dsms if rnd % 2 == 0 else dsms[::-1])
            for name in order:
                new, repeat = one_round(benches[name], name, targets[name], rnd)
                figures[name]["new"].append(new)
                figures[name]["repeat"].append(repeat)
            floor = figures["floor"]
            print("round %d: " % (rnd + 1) + " | ".join(
                "%s: new %.1f µs%s, repeat %.1f µs%s" % (
                    name, figures[name]["new"][-1],
                    "" if name == "floor" else " (%.2f ×)" % (figures[name]["new"][-1]
                                                            / floor["new"][-1]),
                    figures[name]["repeat"][-1],
                    "" if name == "floor" else " (%.2f ×)" % (figures[name]["repeat"][-1]
                                                            / floor["repeat"][-1]))
                for name in targets), flush=True)
        for name in targets:
            if name == "floor":
                continue
            for kind in ("new", "repeat"):
                ratios = [dsm / max(fl, 1e-9) for dsm, fl in zip(figures[name][kind],
                                                               figures["floor"][kind])]
                print("%s, %s: median %.2f × the floor (%.2f-%.2f)" % (
                    name, kind, statistics.median(ratios), min(ratios), max(ratios)))
    finally:
        for target in targets.values():
            target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
