import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, time
import torch, torch.nn.functional as F
from openhart.allocator import keep_large_blocks
print(keep_large_blocks(), keep_large_blocks())
"""


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          check=True, timeout=120).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_thresholds_are_raised_once_unless_the_user_opts_out():
    applied = _run({"OPENHART_MALLOC": ""})
    assert applied[0] == applied[1], "a second call reports the first call's outcome"
    try:
        import ctypes

        ctypes.CDLL(None).gnu_get_libc_version
        glibc = True
    except AttributeError:
        glibc = False
    assert applied[0] == str(glibc)
    assert _run({"OPENHART_MALLOC": "system"}) == ["False", "False"]


IN_HEAP = """
import ctypes, torch
from openhart.allocator import keep_large_blocks
applied = keep_large_blocks()
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
block = torch.empty(16 << 20)  # 64 MiB: above glibc's largest default mmap threshold (32 MiB)
print(applied, block.data_ptr() < libc.sbrk(0))  # below the program break: in the heap
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_come_from_the_heap_instead_of_fresh_mappings():
    import os

    def run(mode: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", IN_HEAP], capture_output=True, text=True, check=True,
                              timeout=120, env=dict(os.environ, OPENHART_MALLOC=mode)).stdout.split()

    tuned = run("")
    if tuned[0] != "True":
        pytest.skip("not glibc")
    assert tuned == ["True", "True"], "a freed block of the heap is reused by the next allocation"
    assert run("system") == ["False", "False"], "the C library's default maps every large block afresh"


MAPPED = """
import ctypes, sys, torch
from openhart.allocator import keep_large_blocks, map_large_blocks
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
in_heap = lambda: torch.empty(2 << 20).data_ptr() < libc.sbrk(0)  # 8 MiB: above the training threshold
print(keep_large_blocks(), in_heap(), map_large_blocks(), in_heap(), keep_large_blocks(), in_heap())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_checkpointed_training_maps_large_blocks_afresh_and_generation_does_not_switch_back():
    import os

    def run(forced: str = "") -> list[str]:
        return subprocess.run([sys.executable, "-c", MAPPED], capture_output=True, text=True, check=True,
                              timeout=120, env=dict(os.environ, OPENHART_MALLOC=forced)).stdout.split()

    policies = run()
    if policies[0] != "True":
        pytest.skip("not glibc")
    assert policies == ["True", "True", "True", "False", "False", "False"], \
        "kept in the heap, then a mapping of its own once training asks; a later pipeline leaves it so"
    assert run("keep") == ["True", "True", "False", "True", "True", "True"], "OPENHART_MALLOC=keep forces the heap"
    assert run("system")[::2] == ["False"] * 3, "the C library's own (adaptive) thresholds"


def test_only_a_checkpointed_training_module_asks_for_the_training_policy(monkeypatch):
    from torch import nn

    from openhart.config import hart_tiny
    from openhart.train import transformer_task
    from openhart.train.train_config import TransformerLossConfig

    asked = []
    monkeypatch.setattr(transformer_task, "map_large_blocks", lambda: asked.append(True))
    config = hart_tiny()
    for checkpointing in (False, True):
        transformer_task.HARTTrainingModule.fresh(config, nn.Identity(), losses=TransformerLossConfig(),
                                                  patch_nums=config.tokenizer.patch_nums, seed=0,
                                                  checkpointing=checkpointing)
    assert asked == [True]
