#!/usr/bin/env python3
"""Restores of one changelog by several builds of `count-app`, in turn.

    python3 tests/bench/restore_ab.py N KEYS ROUNDS COUNT_APP [COUNT_APP ...]

Writes a changelog of N changes over KEYS keys in four partitions as the
benchmark's restore rows do (`Bench.restore_changelog` in run.py), then,
ROUNDS times, for each `count-app` binary given in turn: reads it with the
restore ceiling (`bench-read`) and restores it into an empty state
directory (`Bench.restore_round`). Prints each restore as it ends and then,
per binary, the median restore, CPU and ratio to the median of the
ceiling reads taken before it. For comparing two builds of the restore on
the same changelog and broker; the broker must be running
(`tests/broker/kafka.sh start`). KEEP=1 keeps the topics.
"""
import os
import shutil
import statistics
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    n, keys, rounds = (int(a) for a in sys.argv[1:4])
    bins = sys.argv[4:]
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    b = R.Bench(types.SimpleNamespace(bootstrap=bootstrap, users=n, skip_kstreams=True))
    app = None
    try:
        app, by_key = b.restore_changelog(n, keys, "changelog")
        for r in range(rounds):
            for x in bins:
                b.restore_round(app, n, x, by_key, r, count_app=x)
                shutil.rmtree(b.last_restore_state, ignore_errors=True)
        for x in bins:
            ours, ceiling = b.median(f"{x}: ours"), b.median(f"{x}: ceiling")
            cpu = statistics.median(v["cpu_s"] for v in b.results[f"{x}: ours"])
            lo, hi = b.span(f"{x}: ours")
            print(f"{x}: median {ours:.3f} s ({lo:.3f}–{hi:.3f}), CPU {cpu:.2f} s, "
                  f"ceiling {ceiling:.3f} s, {ceiling / ours:.2f} of it")
    finally:
        if app and not os.environ.get("KEEP"):
            R.run([R.KAFKA, "delete-topics", f"{app}-.*"])
        shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
