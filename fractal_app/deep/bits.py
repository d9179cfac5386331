"""Binary exponents and power-of-two scaling of float64 values, read and written in the
float64 exponent bits: the CPU's stand-ins for ``math.frexp(x)[1]`` and ``math.ldexp``.

The perturbation core (deep/core.py) rescales its doubles by powers of two every few
iterations; as libm calls, frexp and ldexp cost a function call and a branchy slow path
each, and they were a large share of a deep pixel's time. These helpers give the very same
values (tests/test_deep_bits.py checks them against math on zeros, subnormals, infinities
and huge exponents) with a few integer operations and multiplies: ``exponent`` has no
branch (every choice is a ``select``), ``scale2`` one, whose general way is taken almost
never. deep/cpu.py compiles the core with them; the CUDA build keeps the GPU's own
ldexp/frexp, and the simulator runs math's.

Numba only (they bitcast through LLVM intrinsics): call them from compiled code.
"""

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

# float64: 52 fraction bits, 11 exponent bits, exponent bias 1023.
_FRACTION_BITS = 52
_EXPONENT_MASK = 0x7FF
_BIAS = 1023
# 2^64: lifts a subnormal into the normal range, where its exponent bits tell its exponent.
_LIFT_EXP = 64
# Scale factors beyond this many binary orders send every finite nonzero float64 to 0 or
# infinity, as the full factor would (|x| lies in [2^-1074, 2^1024)).
_CLAMP_EXP = 2200
# One downward step that keeps a normal value normal until the last multiply, so at most
# that last multiply rounds (musl's scalbn): 2^-1022 * 2^53.
_DOWN_STEP = -1022 + 53


def _const_int(value):
    return ir.Constant(ir.IntType(64), value)


def _pow2(builder, k):
    """2^k for an i64 k in [-1022, 1023], from its exponent bits."""
    biased = builder.add(k, _const_int(_BIAS))
    return builder.bitcast(builder.shl(biased, _const_int(_FRACTION_BITS)), ir.DoubleType())


def _exponent_bits(builder, x):
    bits = builder.bitcast(x, ir.IntType(64))
    return builder.and_(builder.lshr(bits, _const_int(_FRACTION_BITS)),
                        _const_int(_EXPONENT_MASK))


def _select_int(builder, cond, a, b):
    return builder.select(cond, _const_int(a) if isinstance(a, int) else a,
                          _const_int(b) if isinstance(b, int) else b)


@intrinsic
def exponent(typingctx, x):
    """math.frexp(x)[1]: the e with |x| = f * 2^e, f in [0.5, 1); 0 for 0, inf and nan.

    Written as LLVM instructions at the call site (an intrinsic, not a function): Numba's
    own inlining of many small functions made the core take minutes to compile, and as
    calls they were not inlined and cost more than libm's."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        biased = _exponent_bits(builder, value)
        subnormal = builder.icmp_signed("==", biased, _const_int(0))
        lift = ir.Constant(ir.DoubleType(), 2.0**_LIFT_EXP)
        lifted = builder.select(subnormal, builder.fmul(value, lift), value)
        e = builder.sub(_exponent_bits(builder, lifted), _const_int(_BIAS - 1))
        e = builder.select(subnormal, builder.sub(e, _const_int(_LIFT_EXP)), e)
        zero = builder.fcmp_ordered("==", value, ir.Constant(ir.DoubleType(), 0.0))
        special = builder.or_(zero, builder.icmp_signed("==", biased,
                                                        _const_int(_EXPONENT_MASK)))
        return _select_int(builder, special, 0, e)

    return types.int64(types.float64), codegen


@intrinsic
def scale2(typingctx, x, k):
    """math.ldexp(x, k): x * 2^k, rounded once (to a subnormal, zero or infinity when it
    leaves the normal range), for any integer k.

    When 2^k is itself a normal float64 (-1022 <= k <= 1023: almost every call the core
    makes), one multiply by 2^k is that product, rounded once. Otherwise k is split into up
    to three normal powers of two. Going up, the products only grow, so none rounds before
    the last unless the result overflows anyway. Going down, each early step is 2^-969: if
    one rounds, what is left of k is below -53 and the result is 0 either way, exactly as
    musl's scalbn argues. The two ways are a branch, not a select: a select waits for the
    three dependent multiplies of the general way, and the core's next step waits for it
    (the branch took a fifth off a 1e-300 pixel's time). (An intrinsic, as :func:`exponent`.)
    """
    if x != types.float64 or not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value, power = args
        power = context.cast(builder, power, signature.args[1], types.int64)
        normal_power = builder.and_(
            builder.icmp_signed(">=", power, _const_int(-1022)),
            builder.icmp_signed("<=", power, _const_int(1023)),
        )
        with builder.if_else(normal_power, likely=True) as (one_factor, split):
            with one_factor:
                direct = builder.fmul(value, _pow2(builder, power))
                direct_block = builder.basic_block
            with split:
                general = _scale_by_factors(builder, value, power)
                general_block = builder.basic_block
        result = builder.phi(ir.DoubleType())
        result.add_incoming(direct, direct_block)
        result.add_incoming(general, general_block)
        return result

    return types.float64(types.float64, k), codegen


def _scale_by_factors(builder, value, power):
    """value * 2^power for any i64 power, as up to three multiplies by normal powers of two."""
    low = builder.icmp_signed("<", power, _const_int(-_CLAMP_EXP))
    power = _select_int(builder, low, -_CLAMP_EXP, power)
    high = builder.icmp_signed(">", power, _const_int(_CLAMP_EXP))
    power = _select_int(builder, high, _CLAMP_EXP, power)
    factors = []
    for _ in range(2):
        up = builder.icmp_signed(">", power, _const_int(1023))
        down = builder.icmp_signed("<", power, _const_int(-1022))
        step = _select_int(builder, up, 1023, _select_int(builder, down, _DOWN_STEP, 0))
        power = builder.sub(power, step)
        factors.append(step)
    factors.append(power)
    for factor in factors:
        value = builder.fmul(value, _pow2(builder, factor))
    return value


# The names deep/core.py calls, as the CPU build compiles them in.
CPU_HELPERS = {"frexp_exponent": exponent, "ldexp": scale2}
