"""TFLite's fixed-point preparation: multipliers, shifts and activation ranges.

What TFLite Micro computes once per layer at ``Prepare`` time (QuantizeMultiplier,
CalculateActivationRangeQuantized, the logistic/tanh and softmax input scaling), done
here once at export time; the kernels read the results as integer arguments.
"""

from __future__ import annotations

import math

def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2**(shift - 31), q a 31-bit integer."""
    if m == 0.0:
        return 0, 0
    frac, shift = math.frexp(m)
    q = round(frac * (1 << 31))
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        q, shift = (1 << 31) - 1, 30
    return int(q), int(shift)


def act_range(lo_f, hi_f, scale: float, zp: int) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for a float clamp range."""
    lo, hi = -128, 127
    if lo_f is not None:
        lo = max(lo, zp + int(_round_away(lo_f / scale)))
    if hi_f is not None:
        hi = min(hi, zp + int(_round_away(hi_f / scale)))
    return lo, hi


def _round_away(v: float) -> float:
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)



def logistic_params(input_scale: float, integer_bits: int = 4):
    """TFLite's int8 LOGISTIC/TANH preparation: multiplier, left shift and input radius."""
    real = float(input_scale) * float(1 << (31 - integer_bits))
    q, left_shift = math.frexp(real)
    mult = int(_round_away(q * (1 << 31)))
    radius = ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift) \
        if left_shift >= 0 else ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) * 2.0 ** -left_shift
    return mult, left_shift, int(math.floor(radius))


def softmax_params(input_scale: float, beta: float = 1.0, integer_bits: int = 5):
    """TFLite's PreprocessSoftmaxScaling and CalculateInputRadius for an int8 softmax."""
    real = min(beta * input_scale * (1 << (31 - integer_bits)), (1 << 31) - 1.0)
    q, shift = quantize_multiplier(real)     # QuantizeMultiplierGreaterThanOne
    left_shift = shift
    radius = ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift)
    diff_min = -int(math.floor(radius))
    return q, left_shift, diff_min


