"""``select(cond, a, b)``: a branch-free ``a if cond else b`` for the block kernels.

Written as ``a if cond else b``, each lane would add a branch to Numba's IR; with 64 lanes
and three updates per lane that made Numba's SSA pass take most of a minute and left the
vectorizer diamonds to undo. An LLVM ``select`` is one instruction the SLP vectorizer
packs directly (into masked vector moves / blends). CPU only (Numba intrinsic).
"""

from numba.core import types
from numba.extending import intrinsic


@intrinsic
def select(typingctx, cond, a, b):
    """a if cond else b, for a boolean cond and a, b of one type, without a branch."""
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        c, x, y = args
        return builder.select(c, x, y)

    return a(cond, a, b), codegen
