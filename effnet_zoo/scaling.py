"""Compound scaling (Tan & Le, 2019) as pure functions, and the B0 base network they scale.

Everything here is plain data and arithmetic, so the design of any variant can be inspected
(``effnet-zoo summary``) without building a module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks, named as in the paper's Table 1."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    se_ratio: float = 0.25


@dataclass(frozen=True)
class Scaling:
    """Coefficients of one compound-scaled variant."""

    width_mult: float
    depth_mult: float
    resolution: int
    dropout: float


# EfficientNet-B0, the network found by the MnasNet-style search; every variant scales it.
BASE_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 1, 16),
    StageConfig(2, 3, 2, 6, 24),
    StageConfig(2, 5, 2, 6, 40),
    StageConfig(3, 3, 2, 6, 80),
    StageConfig(3, 5, 1, 6, 112),
    StageConfig(4, 5, 2, 6, 192),
    StageConfig(1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CHANNEL_DIVISOR = 8

# The coefficients Google published with the TF models (efficientnet_builder.py), not the
# rounded alpha/beta/gamma powers: the released checkpoints were trained with these.
VARIANTS: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
    "b8": Scaling(2.2, 3.6, 672, 0.5),
    "l2": Scaling(4.3, 5.3, 800, 0.5),
}

# EfficientNet-Lite (TF's efficientnet_lite_builder): no SE, ReLU6, stem/head and first/last repeats fixed,
# for mobile accelerators. Resolutions are those the released checkpoints are evaluated at.
LITE_VARIANTS: dict[str, Scaling] = {
    "lite0": Scaling(1.0, 1.0, 224, 0.2),
    "lite1": Scaling(1.0, 1.1, 240, 0.2),
    "lite2": Scaling(1.1, 1.2, 260, 0.3),
    "lite3": Scaling(1.2, 1.4, 300, 0.3),
    "lite4": Scaling(1.4, 1.8, 380, 0.3),
}

# The paper's grid-searched constants: depth alpha^phi, width beta^phi, resolution gamma^phi,
# chosen so that alpha * beta^2 * gamma^2 ~= 2 (FLOPs roughly double per unit of phi).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224


def round_channels(channels: float, width_mult: float = 1.0, divisor: int = CHANNEL_DIVISOR) -> int:
    """Scale a channel count and round to a multiple of ``divisor``, never losing more than 10%."""
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_mult: float = 1.0) -> int:
    """Scale a stage's block count, rounding up so that no stage ever loses a block."""
    return int(math.ceil(depth_mult * repeats))


def scaling_from_phi(
    phi: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    base_resolution: int = BASE_RESOLUTION,
) -> Scaling:
    """The paper's compound scaling for any phi, e.g. ``scaling_from_phi(2.5)`` for a "B2.5".

    Resolution is rounded to a multiple of 8 pixels; dropout follows the published variants'
    trend (0.2 at B0, +0.05 per unit of phi, at most 0.5), which is our choice, not the paper's.
    """
    if not math.isfinite(phi) or phi < 0:
        raise ValueError(f"phi must be a finite number >= 0 (B0 is phi=0), got {phi!r}")
    try:
        resolution = int(round(base_resolution * gamma**phi / 8.0)) * 8
        width, depth = round(beta**phi, 6), round(alpha**phi, 6)
    except OverflowError:  # gamma**phi past the float range (phi ~ 5000): no network of that size can exist
        raise ValueError(
            f"phi={phi!r} scales past any network that can be built (width x{beta}^phi, depth x{alpha}^phi); "
            "the published variants are phi 0 (B0) to about 7 (B7)"
        ) from None
    dropout = round(min(0.5, 0.2 + 0.05 * phi), 4)
    return Scaling(width, depth, resolution, dropout)


def scale_stages(
    stages: tuple[StageConfig, ...], width_mult: float = 1.0, depth_mult: float = 1.0, fix_first_last: bool = False
) -> tuple[StageConfig, ...]:
    """Apply width and depth multipliers to every stage (channels rounded, repeats rounded up).

    ``fix_first_last`` keeps the first and last stages' repeats, as EfficientNet-Lite does.
    """
    last = len(stages) - 1
    return tuple(
        replace(
            s,
            repeats=s.repeats if fix_first_last and i in (0, last) else round_repeats(s.repeats, depth_mult),
            out_channels=round_channels(s.out_channels, width_mult),
        )
        for i, s in enumerate(stages)
    )


def count_params(
    stages: tuple[StageConfig, ...],
    stem_channels: int,
    head_channels: int,
    in_chans: int = 3,
    num_classes: int = 1000,
) -> int:
    """Parameters of the network built from already-scaled ``stages``, by arithmetic (nothing is allocated).

    Lets absurd sizes be refused before construction, which for a depth or width in the thousands would try to
    allocate gigabytes to petabytes. BatchNorm counts its weight and bias (its statistics are buffers).
    """

    def block(cin: int, stage: StageConfig) -> int:
        mid = cin * stage.expand_ratio
        n = (cin * mid + 2 * mid if stage.expand_ratio != 1 else 0) + mid * stage.kernel_size**2 + 2 * mid
        if stage.se_ratio > 0:
            reduced = max(1, int(cin * stage.se_ratio))
            n += 2 * mid * reduced + reduced + mid
        return n + mid * stage.out_channels + 2 * stage.out_channels

    total = in_chans * stem_channels * 9 + 2 * stem_channels
    channels = stem_channels
    for stage in (s for s in stages if s.repeats > 0):  # the first block changes the channels, the rest are alike
        total += block(channels, stage) + (stage.repeats - 1) * block(stage.out_channels, stage)
        channels = stage.out_channels
    total += channels * head_channels + 2 * head_channels
    return total + (head_channels * num_classes + num_classes if num_classes else 0)
