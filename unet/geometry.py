"""Shape arithmetic of the valid-convolution U-Net (no framework imports, so config can use it).

Each level applies two unpadded 3x3 convolutions (-4 px) and, except the deepest, a 2x2 max-pool (/2);
each up level doubles the size and applies two more 3x3 convolutions. A tile is valid when every
pooled map has an even side; for the paper's depth 5 the valid inputs are 16c + 60 (572 -> 388).
"""

from __future__ import annotations


def output_size(tile: int, depth: int) -> int | None:
    """Output side for an input side ``tile``, or ``None`` if the tile is invalid."""
    s = tile
    for _ in range(depth - 1):
        s -= 4  # two 3x3 valid convs
        if s <= 0 or s % 2:
            return None
        s //= 2  # 2x2 max-pool
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth - 1):
        s = 2 * s - 4  # 2x2 up-conv, then two 3x3 valid convs
    return s if s > 0 else None


def nearest_valid(tile: int, depth: int) -> tuple[int | None, int | None]:
    """The nearest valid tile sides below and above ``tile`` (either may be ``None``)."""
    below = next((t for t in range(tile - 1, 0, -1) if output_size(t, depth)), None)
    above = next(t for t in range(max(tile + 1, 1), tile + 2 ** (depth + 2) + 256) if output_size(t, depth))
    return below, above


def check_tile(tile: int, depth: int, name: str = "tile") -> int:
    """Return the output side for ``tile``, or raise ``ValueError`` naming the nearest valid sides."""
    out = output_size(tile, depth)
    if out is None:
        below, above = nearest_valid(tile, depth)
        near = " or ".join(str(t) for t in (below, above) if t)
        raise ValueError(
            f"{name}: invalid value {tile}: a depth-{depth} U-Net needs an input side whose pooled "
            f"maps are even (nearest valid: {near})"
        )
    return out
