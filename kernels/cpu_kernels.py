"""Building and loading the CPU kernels of `kernels/cpu/` (C++ behind XLA's foreign-function interface).

The library is compiled from the project's own source with the system C++ compiler against the FFI headers
jaxlib ships (`jax.ffi.include_dir()`), for the machine it runs on (`-march=native`), into a per-user cache
keyed by everything that changes the binary (source, jaxlib version, compiler, flags, CPU). `scripts/
bootstrap.sh` builds it at install; a later process that finds no library builds it once, under a file
lock so that concurrent first runs neither race nor read a half-written file (the result is renamed into
place). Where no compiler is found, the build fails or `DSPARK_JAX_CPU_KERNELS=0` is set, `unavailable_reason`
says why and callers keep the pure-XLA float32 path.

    python -m dspark_jax.kernels.cpu_kernels    # build now; prints the library path or why not
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

SOURCE_DIR = Path(__file__).parent / "cpu"
SOURCE = SOURCE_DIR / "packed_linear.cc"
# -ffp-contract=off: decoding must round exactly as gguf-py does; the kernels' own fused multiply-adds are
# written out explicitly.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off")
TARGETS = {"packed_linear": "dspark_packed_linear", "decode_rows": "dspark_decode_rows"}
DISABLE_VARIABLE = "DSPARK_JAX_CPU_KERNELS"


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dspark-jax"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(compiler: str) -> Path:
    """Where the library built by `compiler` for this machine and jaxlib lives (it may not exist yet)."""
    import jaxlib

    key = hashlib.sha256()
    sources = sorted(SOURCE_DIR.glob("*.[ch]*"))
    for part in (*(p.read_bytes() for p in sources), jaxlib.__version__.encode(),
                 compiler.encode(), " ".join(FLAGS).encode(), _cpu_flags().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"packed_linear-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """Compiles the library unless an identical build is cached; returns its path. Raises RuntimeError
    naming the problem when it cannot be built."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++, clang++); install one, e.g. "
                           "'apt-get install g++', to use the CPU kernels")
    path = library_path(compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / (path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if path.exists():
            return path
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            out = Path(tmp) / path.name
            _run([compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)])
            os.replace(out, path)
    return path


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the CPU kernels failed ({' '.join(command)}):\n{result.stderr[-4000:]}")


@functools.cache
def _load() -> str | None:
    """Builds (if needed), loads and registers the kernels once per process; the reason on failure."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return f"{DISABLE_VARIABLE}=0 is set"
    if sys.platform != "linux":
        return f"the CPU kernels are built for Linux only, not {sys.platform}"
    try:
        library = ctypes.CDLL(str(build()))
        handlers = {symbol: getattr(library, symbol) for symbol in TARGETS.values()}
    except (RuntimeError, OSError, AttributeError) as e:
        return str(e)
    for symbol, handler in handlers.items():
        jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(handler), platform="cpu")
    return None


def unavailable_reason() -> str | None:
    """Why the CPU kernels cannot be used in this process (None: they are built and registered)."""
    return _load()


def main() -> int:
    reason = unavailable_reason()
    if reason is not None:
        print(f"CPU kernels unavailable: {reason}", file=sys.stderr)
        return 1
    print(f"CPU kernels: {library_path(_compiler())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
