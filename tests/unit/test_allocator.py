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
first = map_large_blocks() if sys.argv[1] == "map" else keep_large_blocks()
second = keep_large_blocks() if sys.argv[1] == "map" else map_large_blocks()
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
block = torch.empty(2 << 20)  # 8 MiB: above the training threshold, below glibc's default one
print(first, second, block.data_ptr() < libc.sbrk(0))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_maps_large_blocks_afresh_and_the_first_policy_stands():
    import os

    def run(policy: str, forced: str = "") -> list[str]:
        return subprocess.run([sys.executable, "-c", MAPPED, policy], capture_output=True, text=True, check=True,
                              timeout=120, env=dict(os.environ, OPENHART_MALLOC=forced)).stdout.split()

    trained = run("map")
    if trained[0] != "True":
        pytest.skip("not glibc")
    assert trained == ["True", "False", "False"], "an 8 MiB block is a mapping of its own, returned when freed"
    assert run("keep") == ["True", "False", "True"], "the inference policy keeps it in the heap"
    assert run("keep", forced="map") == ["False", "True", "False"], "OPENHART_MALLOC=map overrides the command"
    assert run("map", forced="system") == ["False", "False", "False"]


def test_training_commands_choose_the_training_policy():
    from openhart.cli import _trains, build_parser

    parse = build_parser().parse_args
    assert _trains(parse(["finetune", "data", "--out", "run"]))
    assert _trains(parse(["train", "transformer", "--config", "c.json"]))
    assert _trains(parse(["bench", "--finetune", "lora"]))
    assert not _trains(parse(["bench"]))
    assert not _trains(parse(["generate", "a cat", "--out", "cat.png"]))
