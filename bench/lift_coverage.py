"""How often the report's interval covers the demo's true uplift, over many seeds
(``make bench-lift``).

The test ``tests/unit/dev/test_responses.py`` checks seeds 0-59 (each program covered in at
least 54) because a suite cannot afford more; this runs the very same chain (its
``covered``: the planner's holdout draw, the demo's simulated answers, attribution, Newcombe's
interval) over as many seeds as asked and prints, per program, how many intervals covered the
truth. A calibrated 95 % interval covers in 95 % of seeds, with a standard error of
sqrt(0.95 x 0.05 / seeds) (0.5 points over 2,000 seeds).

    .venv/bin/python bench/lift_coverage.py [--seeds N] [--first SEED]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit" / "dev"))

# The test's own chain, not a copy of it.
from test_responses import covered

from tend.dev.responses import DEMO_TRUTH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2000, help="how many seeds (default 2000)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    hits = dict.fromkeys(DEMO_TRUTH, 0)
    start = time.monotonic()
    for seed in range(args.first, args.first + args.seeds):
        for program, hit in covered(seed).items():
            hits[program] += hit
    se = math.sqrt(0.95 * 0.05 / args.seeds)
    print(f"seeds {args.first}-{args.first + args.seeds - 1} ({args.seeds}), "
          f"{time.monotonic() - start:.0f} s; a calibrated interval covers in 95 % "
          f"(standard error {100 * se:.1f} points)")
    for program, n in hits.items():
        truth = DEMO_TRUTH[program]
        print(f"  {program:<12} true uplift {100 * truth.uplift:+.1f} points: covered in "
              f"{n:,} of {args.seeds:,} ({100 * n / args.seeds:.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
