"""The seeded fuzz test of openhart's inputs (tests/helpers/fuzz.py; docs/reliability.md).

563 cases: mutations of a tiny model folder (every field of config.json with hostile types,
signs, NaN/Inf, huge values and lists for objects; truncations, bit flips and header edits of
model.safetensors), hostile image files and flags, and the classes of issue #25 (output targets,
signals during writes, concurrent writers, bombs, stalled Hub endpoints, the official layout's
config types, doctored checkpoints, dataset records, web requests), each run in a forked child
under a memory and a time limit. The only outcomes allowed are exit 0 with a valid output, or
exit 2 with one line naming the file or flag, and nothing half-written or lost.
`scripts/fuzz.py` runs longer.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("OPENHART_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CI_COUNTS = {"config": 200, "weights": 100, "image": 28, "flags": 60, "edit": 42, "outputs": 10, "signals": 12,
             "concurrency": 4, "bombs": 8, "stalled": 2, "official": 40, "checkpoint": 14, "records": 14, "web": 20}


@pytest.mark.slow
def test_fuzz_model_folders_images_and_flags(tmp_path):
    argv = [sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--seed", "0", "--work", str(tmp_path / "work"),
            *(x for kind, n in CI_COUNTS.items() for x in (f"--{kind}", str(n)))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=ROOT)
    print(done.stdout)  # the case counts by kind and exit code
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fuzz-report.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"{sum(CI_COUNTS.values()) + 9} fuzz cases"), first  # + whole-file and --out cases
