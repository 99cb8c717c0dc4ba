"""openhart's C++ CPU kernels, compiled on first use and cached.

`load(name)` builds `<name>.cpp` of this folder with torch.utils.cpp_extension and the system's
C++ compiler (scripts/system-deps.sh installs g++) and ninja (a dependency), once per source, torch version and CPU
instruction set, into $OPENHART_CACHE/kernels or ~/.cache/openhart/kernels. It returns None,
having said why once, when there is no compiler or the build fails: every kernel has a PyTorch
path to fall back on.

The code is compiled for the instruction set PyTorch itself dispatches to on this CPU (AVX2,
AVX512 or neither), never with -march=native, so a cache shared by several machines stays valid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}
_loaded: dict[str, ModuleType | None] = {}


def cache_dir() -> Path:
    if os.environ.get("OPENHART_CACHE"):
        return Path(os.environ["OPENHART_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "openhart" / "kernels"


def isa() -> str:
    """The instruction set the kernels are built for: PyTorch's own choice on this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in ISA_FLAGS else "DEFAULT"


def compiler() -> str | None:
    """The C++ compiler cpp_extension will call ($CXX, else c++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "c++"))


def require_torch_compile_toolchain() -> None:
    """torch.compile on the CPU (inductor) builds C++ with the system compiler and the Python
    headers: say what to install, before it fails deep inside inductor."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ValueError("torch.compile on the CPU needs a C++ compiler: install one (Debian: "
                         "apt install g++) or run without compiling")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        raise ValueError("torch.compile on the CPU needs the Python headers: install them "
                         "(Debian: apt install python3-dev) or run without compiling")


def compile_flags() -> list[str]:
    # -fopenmp: at::parallel_for is inline and runs serially without it.
    return ["-O3", "-std=c++17", "-fopenmp", *ISA_FLAGS.get(isa(), ["-DCPU_CAPABILITY=DEFAULT"])]


def build_name(name: str) -> str:
    """Unique per source, flags, torch version, instruction set and Python: a stale build is never reused."""
    source = (SOURCE_DIR / f"{name}.cpp").read_bytes()
    key = hashlib.sha256(source + " ".join(compile_flags()).encode() + torch.__version__.encode()
                         + isa().encode() + sys.version.encode()).hexdigest()[:12]
    return f"openhart_{name}_{isa().lower()}_{key}"


def load(name: str) -> ModuleType | None:
    """The compiled module of `<name>.cpp`, built now if it is not cached; None if it cannot be built."""
    if name not in _loaded:
        _loaded[name] = _build(name)
    return _loaded[name]


def _put_ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; the `ninja` wheel's binary is in the environment's
    bin folder, which is not on PATH when python is called by its full path."""
    try:
        # lazy: put on PATH only when a kernel is built
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def _build(name: str) -> ModuleType | None:
    if compiler() is None:
        logger.warning("no C++ compiler (%s), so the %s kernel falls back to PyTorch; "
                       "install g++ (scripts/system-deps.sh) for the faster path",
                       os.environ.get("CXX", "c++"), name)
        return None
    # lazy: only when a kernel is built (it imports setuptools)
    from torch.utils import cpp_extension

    _put_ninja_on_path()
    module_name = build_name(name)
    directory = cache_dir() / module_name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / f"{module_name}.so").exists():
            logger.warning("compiling the %s kernel for %s (once, about a minute) into %s",
                           name, isa(), directory)
        return cpp_extension.load(name=module_name, sources=[str(SOURCE_DIR / f"{name}.cpp")],
                                  extra_cflags=compile_flags(), extra_ldflags=["-fopenmp"],
                                  build_directory=str(directory), verbose=False)
    except (RuntimeError, OSError, ImportError) as error:  # no cache folder, no ninja, a failed compile or link
        logger.warning("building the %s kernel failed, so it falls back to PyTorch: %s",
                       name, str(error).strip().splitlines()[-1] if str(error).strip() else error)
        return None
