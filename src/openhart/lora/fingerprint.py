"""What ties an adapter to its base model: a probe of the base's weights and its fingerprint.

The probe is a few values of every transformer and diffusion-head tensor (at fixed, evenly
spaced positions), with the tensors' names and shapes. An adapter records the probe of the
weights it was trained on; a model accepts it when its own probe has the same names and shapes
and the same values up to bf16 rounding, so one base loaded in fp32, bf16 or fp16 is the same
base, while another model (another training run, a fine-tune, another width) is not. The
fingerprint is a short hash of the probe's names, shapes and bf16-rounded values, for messages
and metadata.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from torch import nn

# Values taken from each tensor.
PROBE_VALUES = 8
# The parts of a HART model an adapter depends on.
PROBED_PREFIXES = ("transformer.", "head.")
# Two probes match when |a - b| <= RTOL * |b| + ATOL for every value: bf16 keeps 8 significant
# bits, so a weight stored or computed in bf16 differs from its fp32 value by at most 2**-9
# relative; 2**-7 leaves room for a second rounding (fp32 -> fp16 -> bf16).
RTOL, ATOL = 2.0 ** -7, 1e-6


def weights_probe(module: nn.Module, prefixes: tuple[str, ...] = PROBED_PREFIXES) -> dict[str, dict]:
    """{tensor name: {"shape": [...], "values": [...]}} of the weights under `prefixes` (by
    default the transformer's and the head's; peft's wrapping and LoRA weights excluded: the
    probe describes the base)."""
    probe = {}
    for name, tensor in module.state_dict().items():
        if "lora_" in name or not name.startswith(prefixes) or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        positions = torch.linspace(0, max(flat.numel() - 1, 0), min(PROBE_VALUES, flat.numel())).long()
        probe[name.replace(".base_layer", "")] = {"shape": list(tensor.shape),
                                                  "values": flat[positions.to(flat.device)].float().cpu().tolist()}
    return dict(sorted(probe.items()))


def fingerprint(probe: dict[str, dict]) -> str:
    """16 hex digits of sha256 over the probe's names, shapes and bf16-rounded values."""
    digest = hashlib.sha256()
    for name, entry in sorted(probe.items()):
        digest.update(json.dumps([name, entry["shape"]]).encode())
        values = torch.tensor(entry["values"], dtype=torch.float32).to(torch.bfloat16)
        digest.update(values.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def probes_match(recorded: dict[str, dict], actual: dict[str, dict]) -> bool:
    """Whether two probes describe the same weights (up to bf16 rounding)."""
    if recorded.keys() != actual.keys():
        return False
    for name, entry in recorded.items():
        other = actual[name]
        if list(entry["shape"]) != list(other["shape"]) or len(entry["values"]) != len(other["values"]):
            return False
        for a, b in zip(entry["values"], other["values"]):
            if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > RTOL * abs(b) + ATOL:
                return False
    return True


def check_probe(probe: object) -> dict[str, dict]:
    """A probe read from a file, checked for its shape (an error says what is wrong)."""
    if not isinstance(probe, dict) or not probe:
        raise ValueError("the base probe must be a non-empty object")
    for name, entry in probe.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("shape"), list)
                or not isinstance(entry.get("values"), list)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry["values"])
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry["shape"])):
            raise ValueError(f"the base probe's entry {name!r} must be {{\"shape\": [int, ...], \"values\": [number, ...]}}")
    return probe
