#!/usr/bin/env python3
"""Measures (not a test) the longest silences between an engine's progress lines.

A worker stops an engine that prints no progress for `--engine-stall-seconds`
(default 600). This runs one engine command as the worker would, timestamps each
progress line on its stdout, and prints the longest gaps and where they fell, so
the limit can be judged against what a real source needs.

Usage: bench/progress_gaps.py DRAKE ENGINE-ARGS...
  e.g. bench/progress_gaps.py target/release/drake transcode SRC.mp4 \
         --rendition 240p --out /tmp/g/240p --rendition 720p --out /tmp/g/720p
"""
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    started = last = time.monotonic()
    gaps = []
    engine = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
    for line in engine.stdout:
        if line.startswith('{"type":'):
            now = time.monotonic()
            gaps.append((now - last, now - started))
            last = now
    engine.wait()
    ended = time.monotonic()
    gaps.append((ended - last, ended - started))
    gaps.sort(reverse=True)
    print(f"exit {engine.returncode}, {len(gaps) - 1} progress lines in {ended - started:.1f} s")
    print("longest silences: " + ", ".join(f"{g:.2f} s (ending at {at:.1f} s)" for g, at in gaps[:4]))


if __name__ == "__main__":
    main()
