"""Seeded fuzzing of openhart's inputs (model folders, images, flags): a longer run than CI's.

    python scripts/fuzz.py --seed 1 --config 2000 --weights 1000 --image 300 --flags 500 --edit 126

Each case runs in a forked child under a memory and a time limit; the only outcomes allowed are
exit 0 with a valid output or exit 2 with one line naming the file or flag, and nothing
half-written (tests/helpers/fuzz.py). Exits 1 if any case fails; failing cases keep their folder
under --work for a look.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.fuzz import report, run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", type=int, default=2000, help="config.json mutations")
    parser.add_argument("--weights", type=int, default=1000, help="model.safetensors mutations")
    parser.add_argument("--image", type=int, default=300, help="hostile image files")
    parser.add_argument("--flags", type=int, default=500, help="hostile flag combinations")
    parser.add_argument("--edit", type=int, default=126, help="hostile images and masks for edit / vary")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="openhart-fuzz-"))
    counts = {"config": args.config, "weights": args.weights, "image": args.image, "flags": args.flags,
              "edit": args.edit}
    done = []

    def progress(outcome):
        done.append(outcome)
        if len(done) % 100 == 0:
            print(f"{len(done)} cases, {sum(bool(o.problems) for o in done)} failing", file=sys.stderr)

    outcomes, kinds = run(args.seed, work, counts, workers=args.workers, progress=progress)
    print(report(outcomes, kinds))
    print(f"work folder: {work}")
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
