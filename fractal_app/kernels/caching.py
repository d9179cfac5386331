"""Numba's on-disk cache for this package's CPU kernels, under one key for all their sources.

Numba checks a cached kernel against its own file only (size and modification time). The
CPU kernels compile in code from other files: the scalar cores of ``escape.py``, the
colouring of ``color.py``, the ray marcher of ``raymarch.py``, and the lane code that
``lanes.py``'s template writes while a kernel compiles. Edit one of those and Numba keeps
loading the old machine code. :class:`KernelCache` replaces that check: a kernel's cache
entry is valid only for the exact bytes of every source file in ``fractal_app/kernels`` and
``fractal_app/deep`` (the perturbation core; recursively) plus the kernel's own file, and for
the Numba and llvmlite that compiled it (:func:`kernel_source_key`).

Why the index's source stamp and not a folder per key: Numba already drops a whole index
whose stamp differs and overwrites its data files, so an edit leaves no stale copies behind
(a folder per key would keep every old one), and the cache locator stays free to choose the
folder (the images' read-only, per-CPU-level folders: ``fractal_app.warmup``). The CPU the
code was compiled for is already in Numba's index key (CPU name and feature list); the
optimiser settings Numba leaves out of it (SLP vectorizer, OPT) are added here.

Kernels opt in with :func:`cached` instead of ``njit(cache=True)``; a test checks that no
kernel of the package uses Numba's own cache.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import llvmlite
import numba
from numba.core import config as numba_config
from numba.core.caching import FunctionCache, IndexDataCacheFile

KERNELS_DIR = Path(__file__).resolve().parent
# Every folder whose code a cached kernel can compile in.
SOURCE_DIRS = (KERNELS_DIR, KERNELS_DIR.parent / "deep")


@functools.cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def kernel_source_key() -> str:
    """One hash of every kernel source file and of the compiler versions.

    Files are read once per process: the sources of a running program do not change under
    it (an edit takes effect in the next process, as any Python edit does).
    """
    digest = hashlib.sha256(f"numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    package = KERNELS_DIR.parent
    for path in sorted(path for folder in SOURCE_DIRS for path in folder.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        digest.update(_file_digest(str(path)).encode())
    return digest.hexdigest()


def source_stamp(py_file: str) -> tuple[str, str]:
    """What a kernel's cache entry is valid for: all kernel sources, and its own file
    (which may live outside ``kernels/``, like the PNG decoder's)."""
    return kernel_source_key(), _file_digest(str(Path(py_file).resolve()))


class KernelCache(FunctionCache):
    """Numba's function cache with :func:`source_stamp` as the index's freshness stamp and
    the optimiser settings in the index key."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = IndexDataCacheFile(
            cache_path=self._cache_path,
            filename_base=self._impl.filename_base,
            source_stamp=source_stamp(py_func.__code__.co_filename),
        )

    def _index_key(self, sig, codegen):
        # A lane kernel compiled once with the vectorizer off (or unoptimised) ran 10x
        # slower, and Numba's own key would have let every later process load that copy.
        settings = ("SLP_VECTORIZE", numba_config.SLP_VECTORIZE, "OPT", str(numba_config.OPT))
        return (*super()._index_key(sig, codegen), settings)

    def has_entry_for(self, codegen, signature: tuple | None = None) -> bool:
        """Whether the cache holds fresh code of this kernel compiled for ``codegen``'s CPU,
        for ``signature`` (a tuple of Numba types; None: any); reads the index only."""
        magic = codegen.magic_tuple()
        return any(key[1] == magic and (signature is None or key[0] == signature)
                   for key in self._cache_file._load_index())


def cached(dispatcher):
    """Cache a Numba dispatcher on disk under :func:`kernel_source_key` (use instead of
    ``cache=True``, after ``njit``). Returns the dispatcher."""
    if not isinstance(dispatcher._cache, KernelCache):
        dispatcher._cache = KernelCache(dispatcher.py_func)
    return dispatcher
