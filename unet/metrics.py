"""Segmentation metrics on the host in float64: NVIDIA's soft Dice, thresholded Dice/IoU, pixel error,
and the ISBI 2012 leaderboard scores V_rand and V_info (Arganda-Carreras et al. 2015).

Labels are {0, 1} with 1 = cell interior (the larger label value). V_rand and V_info compare the
cells (connected components of the interior after thinning the boundary to one pixel) of the
prediction and the ground truth, restricted to ground-truth interior pixels, and are reported as
the best over thresholds 0.0, 0.1, ..., 1.0 (alpha = 0.5 in both scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.measure import label as connected
from skimage.morphology import skeletonize

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))
EPS = 1e-6


def soft_dice(prob: np.ndarray, labels: np.ndarray) -> float:
    """NVIDIA's soft Dice: mean over both classes of (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)."""
    p1, t1 = prob.astype(np.float64).ravel(), labels.astype(np.float64).ravel()
    scores = []
    for p, t in ((p1, t1), (1 - p1, 1 - t1)):
        scores.append((2 * np.sum(p * t) + EPS) / (np.sum(p * p) + np.sum(t * t) + EPS))
    return float(np.mean(scores))


def overlap(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Dice and IoU of the interior (1) and Dice of the membrane (0), and the pixel error."""
    p, t = pred.astype(bool), labels.astype(bool)
    inter, union = np.sum(p & t), np.sum(p | t)
    m_inter = np.sum(~p & ~t)
    return {
        "dice": float(2 * inter / max(p.sum() + t.sum(), 1)),
        "iou": float(inter / max(union, 1)),
        "dice_membrane": float(2 * m_inter / max((~p).sum() + (~t).sum(), 1)),
        "pixel_error": float(np.mean(p != t)),
    }


def cells(interior: np.ndarray) -> np.ndarray:
    """Label cells: thin the boundary (complement of ``interior``) to one pixel, label the rest (4-conn)."""
    boundary = skeletonize(~interior.astype(bool))
    return connected(~boundary, connectivity=1, background=0)


def rand_info(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(V_rand, V_info) of segmentation ``seg`` against ground-truth segments ``gt``, over ``gt != 0``."""
    mask = gt.ravel() != 0
    s, t = seg.ravel()[mask].astype(np.int64), gt.ravel()[mask].astype(np.int64)
    if s.size == 0:
        return 0.0, 0.0
    _, joint = np.unique(t * (s.max() + 1) + s, return_counts=True)
    _, ms = np.unique(s, return_counts=True)
    _, mt = np.unique(t, return_counts=True)
    n = float(s.size)
    pij, ps, pt = joint / n, ms / n, mt / n
    v_rand = np.sum(pij**2) / (0.5 * np.sum(ps**2) + 0.5 * np.sum(pt**2))
    hs, ht = -np.sum(ps * np.log(ps)), -np.sum(pt * np.log(pt))
    mutual = np.sum(pij * np.log(pij)) + hs + ht  # I(S;T) = H(S) + H(T) - H(S,T)
    v_info = mutual / (0.5 * hs + 0.5 * ht) if hs + ht > 0 else 1.0
    return float(v_rand), float(v_info)


def slice_metrics(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Every metric for one slice: probabilities (H, W) of the interior, labels (H, W) in {0, 1}."""
    out: dict[str, Any] = {"soft_dice": soft_dice(prob, labels), **overlap(prob > threshold, labels)}
    gt = cells(labels.astype(bool))
    scores = [rand_info(cells(prob > t), gt) for t in THRESHOLDS]
    best_r, best_i = (
        max(range(len(scores)), key=lambda i: scores[i][0]),
        max(range(len(scores)), key=lambda i: scores[i][1]),
    )
    out |= {
        "vrand": scores[best_r][0],
        "vrand_threshold": THRESHOLDS[best_r],
        "vinfo": scores[best_i][1],
        "vinfo_threshold": THRESHOLDS[best_i],
    }
    return out


METRICS = ("soft_dice", "dice", "iou", "dice_membrane", "pixel_error", "vrand", "vinfo")


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each metric over slices."""
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
