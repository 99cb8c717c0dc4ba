"""Seeded fuzzing of openhart's inputs (model folders, images, flags): a longer run than CI's.

    python scripts/fuzz.py --seed 1            (every class, the counts of --help)

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

from tests.helpers.fuzz import KINDS, report, run  # noqa: E402

DEFAULT_COUNTS = {"config": 2000, "weights": 1000, "image": 300, "flags": 500, "edit": 126, "outputs": 50,
                  "signals": 60, "concurrency": 20, "bombs": 40, "stalled": 8, "official": 300, "checkpoint": 70,
                  "records": 60, "web": 100}
HELP = {"config": "config.json mutations", "weights": "model.safetensors mutations", "image": "hostile image files",
        "flags": "hostile flag combinations", "edit": "hostile images and masks for edit / vary",
        "outputs": "output targets (read-only, FIFO, folder, device, long names)",
        "signals": "SIGTERM/SIGHUP/SIGINT during a folder write", "concurrency": "two writers of one folder",
        "bombs": "sparse files, tar bombs, deep JSON, huge numbers", "stalled": "Hub endpoints that stall",
        "official": "type confusion in the official layout's config files",
        "checkpoint": "doctored training checkpoints", "records": "hostile dataset records and tar captions",
        "web": "hostile HTTP requests to `openhart serve`"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    for kind in KINDS:
        parser.add_argument(f"--{kind}", type=int, default=DEFAULT_COUNTS[kind], help=HELP[kind])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="openhart-fuzz-"))
    counts = {kind: getattr(args, kind) for kind in KINDS}
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
