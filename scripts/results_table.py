"""One markdown table of several `openhart eval` results: a row per model, split and variant.

Usage: .venv/bin/python scripts/results_table.py NAME=eval/DIR [NAME=eval/DIR ...]

Columns: FID, KID x1000, retrieval top-1 / top-5, grouped top-5 (skin-tone variants count; empty
for results written before grouping) and the teacher-forced last-scale accuracy of the split; the
tokenizer's reconstruction retrieval (the ceiling) is a row of its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def grouped(m: dict) -> str:
    return f"{100 * m['retrieval_grouped_top5']:.1f}%" if "retrieval_grouped_top5" in m else ""


def rows(name: str, results: dict) -> list[str]:
    out = []
    for split, data in results["splits"].items():
        acc = data["accuracy"]["last_scale_top1"]
        ceiling = data["reconstruction_retrieval"]["continuous"]
        out.append(f"| {name} | {split} | reconstruction (ceiling) | | | {100 * ceiling['retrieval_top1']:.1f}% | "
                   f"{100 * ceiling['retrieval_top5']:.1f}% | {grouped(ceiling)} | |")
        for variant, m in data["generation"].items():
            out.append(f"| {name} | {split} | {variant} | {m['fid']:.1f} | {m['kid_x1000']:.1f} ± "
                       f"{m['kid_x1000_std']:.1f} | {100 * m['retrieval_top1']:.1f}% | {100 * m['retrieval_top5']:.1f}% "
                       f"| {grouped(m)} | {acc:.3f} |")
    return out


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    lines = ["| model | captions | variant | FID | KID x1000 | top-1 | top-5 | grouped top-5 | last-scale acc. |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arg in argv:
        name, folder = arg.split("=", 1)
        lines += rows(name, json.loads((Path(folder) / "results.json").read_text()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
