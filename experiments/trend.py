"""A paired gap's trend against training tokens: the line ``gap = a + b · ln(tokens)``, where it
reaches 0, and the budgets at which the data cannot rule a crossing out."""

from __future__ import annotations

import math

import numpy as np

FIT_FROM = 0.25  # within a run, the trend is fitted on the evaluations after this fraction


def fit_trend(gaps: dict[int, dict[int, float]], since: float = FIT_FROM) -> dict | None:
    """Least squares ``gap = a + b · ln(tokens)`` over every seed's points from ``since`` of the
    largest token count on; the crossing is where the line reaches 0 (if it heads there)."""
    points = [(t, g) for per_seed in gaps.values() for t, g in per_seed.items()]
    if not points:
        return None
    last = max(t for t, _ in points)
    points = [(t, g) for t, g in points if t >= since * last]
    if len({t for t, _ in points}) < 3:
        return None
    x = np.log([t for t, _ in points])
    y = np.array([g for _, g in points])
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    s2 = float(residual @ residual / max(len(x) - 2, 1))
    se_b = math.sqrt(s2 / ((x - x.mean()) @ (x - x.mean())))
    heads_to_zero = b != 0 and -a / b > x.max() and (a + b * x.max()) * b < 0
    crossing = _tokens(-a / b) if heads_to_zero else math.inf
    return {"a": a, "b": b, "se_b": se_b, "crossing": None if math.isinf(crossing) else crossing,
            "points": len(x), "x_mean": float(x.mean()), "y_mean": float(y.mean()), "s2": s2}


def _tokens(log_tokens: float) -> float:
    """exp, infinite past the float range (a line all but flat reaches 0 beyond any budget)."""
    try:
        return math.exp(log_tokens)
    except OverflowError:
        return math.inf


def line_sd(fit: dict, log_tokens):
    """Standard error of the fitted line at ln(tokens): s²/n + se_b²·(x − x̄)², rooted."""
    u = np.asarray(log_tokens) - fit["x_mean"]
    return np.sqrt(fit["s2"] / fit["points"] + fit["se_b"] ** 2 * u * u)


def crossing_range(fit: dict, z: float = 2.0) -> tuple[float, float] | None:
    """The first and the last budget ahead of the data's centre at which the fitted line's ±z
    s.e. band holds 0 (Fieller's interval for the crossing), in tokens; the last is infinite when
    the band holds 0 however far ahead (a slope within z s.e. of 0). None when it never does.

    With u = ln(tokens) − mean, the line is ȳ + b·u with variance s²/n + se_b²·u², so the band
    holds 0 where q(u) = (b² − z²se_b²)u² + 2ȳb·u + ȳ² − z²s²/n ≤ 0."""
    m, b = fit["y_mean"], fit["b"]
    qa, qb, qc = b * b - (z * fit["se_b"]) ** 2, 2 * m * b, m * m - z * z * fit["s2"] / fit["points"]
    if qa == 0:
        roots = [] if qb == 0 else [-qc / qb]
    else:
        disc = qb * qb - 4 * qa * qc
        roots = [] if disc < 0 else [(-qb + r) / (2 * qa) for r in (-math.sqrt(disc), math.sqrt(disc))]
    ahead = sorted(u for u in roots if u > 0)
    first = 0.0 if qc <= 0 else (ahead[0] if ahead else None)  # q(0) = qc
    if first is None or math.isinf(_tokens(fit["x_mean"] + first)):
        return None
    unbounded = qa < 0 or (qa == 0 and qb <= 0)  # q(u) ≤ 0 for every large u
    last = math.inf if unbounded else _tokens(fit["x_mean"] + max(ahead, default=first))
    return _tokens(fit["x_mean"] + first), last


def fmt_tokens(t: float) -> str:
    return f"{t / 1e9:.1f}B" if t >= 1e9 else f"{t / 1e6:.1f}M"


def crossing(fit: dict, gaps: dict[int, dict[int, float]]) -> str:
    """Where the fitted line reaches 0, in words; nothing when its slope is within two standard
    errors of 0 (a flat line crosses anywhere)."""
    if abs(fit["b"]) < 2 * fit["se_b"]:
        return "— (slope within 2 s.e. of 0)"
    if fit["crossing"]:
        return fmt_tokens(fit["crossing"])
    last = max(max(p) for p in gaps.values())
    return "already below" if fit["a"] + fit["b"] * math.log(last) < 0 else \
        "never (gap not shrinking)"


def band(fit: dict, widths: tuple[float, ...] = (1.0, 2.0)) -> str:
    """Where the crossing can lie, in words: the budgets at which the line's band of each width
    (in standard errors) holds 0 (``crossing_range``), after the central line's own crossing."""
    parts = []
    for z in widths:
        span = crossing_range(fit, z)
        if span is not None:
            end = "on" if math.isinf(span[1]) else f"to {fmt_tokens(span[1])}"
            parts.append(f"from {fmt_tokens(span[0])} {end} at ±{z:g} s.e.")
    if not parts:
        return ""
    centre = f"the central line at {fmt_tokens(fit['crossing'])}; " if fit["crossing"] else ""
    return f" ({centre}its band holds 0 " + ", ".join(parts) + ")"
