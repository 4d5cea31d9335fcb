"""Summarise a py-spy ``raw`` (collapsed stacks) profile: where the samples are.

    python bench/hotspots.py PROFILE.txt [--top N]

Prints the functions with the most samples on top of the stack (self) and
the most samples anywhere in the stack (inclusive), as shares of all samples.
``bench/run.py --profile DIR`` writes such profiles for the processes under test.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")  # "f (file.py:123)" -> "f (file.py)"


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own, inclusive


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    total, own, inclusive = summarise(args.profile)
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"-- {title} ({total} samples)")
        for frame, n in counts.most_common(args.top):
            print(f"{100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
