"""Short text for values shown to people: one formatting rule for the text face and the panel."""

from __future__ import annotations

import math


def fmt_value(value, width: int = 24) -> str:
    """A metric or config value, short: 4 significant digits for floats, long text cut at ``width``."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        value = "[" + ",".join(fmt_value(v, width) for v in value) + "]"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt_seconds(seconds: float | None, empty: str = "-") -> str:
    """A duration, short: ``4.2s``, ``3m07s``, ``2h05m``; ``empty`` when unknown."""
    if seconds is None:
        return empty
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
