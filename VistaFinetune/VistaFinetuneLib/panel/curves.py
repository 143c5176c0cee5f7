"""The Training section's live plot, as polylines in pixel coordinates (the widget only draws them)."""

from __future__ import annotations

from dataclasses import dataclass

MARGIN = 6


@dataclass(frozen=True)
class CurvePicture:
    """Two polylines in a ``width`` x ``height`` picture: loss (scaled to its own range) and Dice (0..1)."""

    width: int
    height: int
    loss: list[tuple[int, int]]
    dice: list[tuple[int, int]]
    caption: str


def _x(epoch: float, epochs: float, width: int) -> int:
    return int(round(MARGIN + (width - 2 * MARGIN) * (epoch / epochs if epochs else 0.0)))


def _y(fraction: float, height: int) -> int:
    return int(round(height - MARGIN - (height - 2 * MARGIN) * min(max(fraction, 0.0), 1.0)))


def curve_picture(
    loss: list[tuple[float, float]], val_dice: list[float], max_epochs: int | None, width: int, height: int
) -> CurvePicture:
    """Loss against epoch (fractional) and validation Dice at each epoch end (index 0: before training)."""
    epochs = float(max(max_epochs or 0, len(val_dice) - 1, max((e for e, _ in loss), default=0.0), 1))
    low = min((v for _, v in loss), default=0.0)
    high = max((v for _, v in loss), default=1.0)
    span = high - low or 1.0
    loss_points = [(_x(epoch, epochs, width), _y((value - low) / span, height)) for epoch, value in loss]
    dice_points = [(_x(float(index), epochs, width), _y(value, height)) for index, value in enumerate(val_dice)]
    parts = []
    if loss:
        parts.append(f"loss {loss[-1][1]:.4f}")
    if val_dice:
        parts.append(f"val Dice {val_dice[-1]:.4f} (start {val_dice[0]:.4f}, best {max(val_dice):.4f})")
    return CurvePicture(width, height, loss_points, dice_points, "; ".join(parts) or "no training values yet")
