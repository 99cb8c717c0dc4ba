"""Golden conformance cases: discovery, loading, and comparison with bookkeeping.

A case folder holds `llm/`, `tokenizer/` (official layout) and `vectors.safetensors`, as described
in tests/fixtures/conformance/hart-tiny/vectors.md. Cases come from tests/fixtures/conformance/ and
from the colon-separated folders of the environment variable OPENHART_CONFORMANCE_CASES.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "conformance"
ENV_VAR = "OPENHART_CONFORMANCE_CASES"

# Recommended fp32 tolerance of the conformance README: |got - want| <= ATOL + RTOL * |want|.
ATOL = 1e-4
RTOL = 1e-4

# Max error per tensor group over the whole session, printed by conftest.py.
MAX_ERRORS: dict[str, dict[str, float]] = {}


def case_dirs() -> list[Path]:
    """Shipped cases first, then every folder named in OPENHART_CONFORMANCE_CASES."""
    dirs = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    extra = os.environ.get(ENV_VAR, "")
    dirs += [Path(p).expanduser().resolve() for p in extra.split(":") if p.strip()]
    return dirs


def case_ids(dirs: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for d in dirs:
        n = seen.get(d.name, 0)
        seen[d.name] = n + 1
        ids.append(d.name if n == 0 else f"{d.name}#{n + 1}")
    return ids


@dataclass
class GoldenCase:
    """The tensors of one case, with a record of which ones a test has read or compared."""

    root: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    used: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, root: Path) -> "GoldenCase":
        if not root.is_dir():
            raise AssertionError(f"conformance case folder does not exist: {root}")
        vectors = root / "vectors.safetensors"
        for required in (vectors, root / "llm" / "config.json", root / "tokenizer" / "config.json"):
            if not required.is_file():
                raise AssertionError(f"conformance case {root} lacks {required.relative_to(root)}")
        with safe_open(str(vectors), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
        return cls(root=root, tensors=tensors, metadata=metadata)

    @property
    def name(self) -> str:
        return self.root.name

    def meta_json(self, key: str) -> dict:
        return json.loads(self.metadata.get(key, "{}"))

    def input(self, key: str) -> torch.Tensor:
        """A tensor the test feeds in (counted as covered)."""
        self.used.add(key)
        return self.tensors[key]

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.tensors if k.startswith(prefix))

    def check(self, key: str, got: torch.Tensor) -> float:
        """Compare with the golden tensor: exact for integers, ATOL + RTOL*|want| for floats."""
        assert key in self.tensors, f"{self.name}: no golden tensor {key}"
        want = self.tensors[key]
        self.used.add(key)
        got = got.detach().cpu()
        assert tuple(got.shape) == tuple(want.shape), (
            f"{self.name}/{key}: shape {tuple(got.shape)} != golden {tuple(want.shape)}")
        if not want.is_floating_point():
            mismatches = (got != want).sum().item()
            assert mismatches == 0, f"{self.name}/{key}: {mismatches} of {want.numel()} values differ"
            error = 0.0
        else:
            want64, got64 = want.double(), got.double()
            diff = (got64 - want64).abs()
            error = diff.max().item() if diff.numel() else 0.0
            bound = ATOL + RTOL * want64.abs()
            worst = (diff - bound).max().item() if diff.numel() else -1.0
            assert worst <= 0, (
                f"{self.name}/{key}: max abs error {error:.3g} exceeds {ATOL:g} + {RTOL:g}*|want|")
        group = key.split(".")[0] + "." + key.split(".")[1] if key.count(".") else key
        bucket = MAX_ERRORS.setdefault(self.name, {})
        bucket[group] = max(bucket.get(group, 0.0), error)
        return error

    def assert_covered(self, prefix: str) -> None:
        """Fail unless every tensor under `prefix` was compared or used as an input."""
        missed = [k for k in self.keys(prefix) if k not in self.used]
        assert not missed, f"{self.name}: golden tensors not checked: {missed}"
