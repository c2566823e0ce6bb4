"""Segmentation metrics on the host in float64: NVIDIA's soft Dice, Dice/IoU and the mismatch rate at a
fixed threshold, and the ISBI 2012 challenge's scores exactly as its evaluation code computes them.

The challenge scores follow Arganda-Carreras et al. 2015 (Front. Neuroanat. 9:142) and the Fiji code the
challenge ran (Trainable_Segmentation's ``RandError.getMaximalVRandAfterThinning(0.0, 1.0, 0.1)``,
``VariationOfInformation.getMaximalVInfoAfterThinning`` and ``PixelError.getPixelErrorMaximalFScore``):

- ground truth: 4-connected components of the cell interior, **not thinned**; only its interior pixels
  are scored (foreground restriction);
- proposal: the interior probability binarised at ``t`` (``p > t``), thinned by a 4-connected watershed
  of the binary map from its own components, whose 1-pixel dam lines are label 0; every label-0 pixel
  of the proposal counts as its own singleton segment;
- V_rand / V_info: the Rand and information-theoretic F-scores (alpha = 0.5) of the pair-count /
  entropy contingency with N^2 normalisation;
- one threshold for the whole stack: ``t = 0.0, 0.1, ...`` accumulated in double precision exactly like
  the Java ``for`` loop (11 values, the last 0.9999999999999999), each score aggregated over the stack
  at each threshold (see :func:`aggregate`), then the maximum over thresholds;
- pixel error: 1 - the best pixel F-score of the interior over the same thresholds.

Deliberate differences: the watershed is scikit-image's (priority flooding with a FIFO among equal
values), not MorphoLibJ's; on a binary map both flood the membrane breadth-first from the cells and can
place a dam line one pixel apart where two fronts meet on an even-width membrane. The tests bound the
effect against an independent port of the challenge's code. A slice without ground-truth interior scores NaN
as in the Java, and a threshold whose stack score is NaN is never chosen.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.measure import label as components
from skimage.segmentation import watershed

EPS = 1e-6


def challenge_thresholds() -> tuple[float, ...]:
    """The thresholds of the challenge's ``for (th = 0.0; th <= 1.0; th += 0.1)`` loop, bit for bit."""
    out, t = [], 0.0
    while t <= 1.0:
        out.append(t)
        t += 0.1
    return tuple(out)


THRESHOLDS = challenge_thresholds()


def soft_dice(prob: np.ndarray, labels: np.ndarray) -> float:
    """NVIDIA's soft Dice: mean over both classes of (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)."""
    p1, t1 = prob.astype(np.float64).ravel(), labels.astype(np.float64).ravel()
    scores = []
    for p, t in ((p1, t1), (1 - p1, 1 - t1)):
        scores.append((2 * np.sum(p * t) + EPS) / (np.sum(p * p) + np.sum(t * t) + EPS))
    return float(np.mean(scores))


def overlap(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Dice and IoU of the interior (1), Dice of the membrane (0), and the plain pixel mismatch rate."""
    p, t = pred.astype(bool), labels.astype(bool)
    inter, union = np.sum(p & t), np.sum(p | t)
    m_inter = np.sum(~p & ~t)
    return {
        "dice": float(2 * inter / max(p.sum() + t.sum(), 1)),
        "iou": float(inter / max(union, 1)),
        "dice_membrane": float(2 * m_inter / max((~p).sum() + (~t).sum(), 1)),
        "mismatch": float(np.mean(p != t)),
    }


def thin(interior: np.ndarray) -> np.ndarray:
    """Proposal segments: the binary map's 4-connected cells grown over the membrane by a 4-connected
    watershed; the 1-pixel dam lines where two cells meet are 0."""
    interior = interior.astype(bool)
    seeds = components(interior, connectivity=1, background=0)
    if seeds.max() == 0:
        return np.ones_like(seeds)  # no cell at all: the flooding makes the whole membrane one basin
    # flat membrane (0) below the cells (1): the membrane floods breadth-first from every cell at once
    return watershed(interior.astype(np.uint8), seeds, connectivity=1, watershed_line=True)


def slice_counts(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Foreground-restricted contingency sums of proposal ``seg`` (0 = singletons) vs ground truth ``gt``
    (0 = membrane, not scored), N^2-normalised as in ``RandError.foregroundRestrictedStatsN2`` and
    ``VariationOfInformation.foregroundRestrictedVI``."""
    mask = gt.ravel() != 0
    t, s = gt.ravel()[mask].astype(np.int64), seg.ravel()[mask].astype(np.int64)
    n = float(t.size)
    if n == 0:
        return {"n": 0.0, "sum_a2": 0.0, "sum_b2": 0.0, "sum_ab2": 0.0, "h_a": 0.0, "h_b": 0.0, "h_ab": 0.0}
    single = float(np.sum(s == 0)) / n  # mass of the proposal's singletons, each 1/n
    a = np.bincount(t)[1:] / n
    b = np.bincount(s)[1:] / n
    _, joint = np.unique(t[s != 0] * (s.max() + 1) + s[s != 0], return_counts=True)
    p = joint / n
    a, b = a[a > 0], b[b > 0]
    return {
        "n": n,
        "sum_a2": float(np.sum(a * a)),
        "sum_b2": float(np.sum(b * b) + single / n),
        "sum_ab2": float(np.sum(p * p) + single / n),
        # entropies H(T), H(S), H(S, T) in nats, singletons contributing -(1/n) log(1/n) each
        "h_a": float(-np.sum(a * np.log(a))),
        "h_b": float(-np.sum(b * np.log(b)) + single * np.log(n)),
        "h_ab": float(-np.sum(p * np.log(p)) + single * np.log(n)),
    }


def _fscore(tp: float, fp: float, fn: float) -> float:
    """``ClassificationStatistics``' F-score: precision (recall) is 1 when there is no FP (FN)."""
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def slice_scores(c: dict[str, float]) -> tuple[float, float]:
    """(V_rand, V_info) of one slice's contingency sums, with the Java's degenerate cases: no ground-truth
    interior gives NaN (0/0), and a zero entropy on either side gives V_info 0 (``VariationOfInformation``
    sets precision or recall to 0 then)."""
    if c["n"] == 0:
        return math.nan, math.nan
    n2 = c["n"] ** 2
    tp = n2 * c["sum_ab2"]
    v_rand = _fscore(tp, n2 * c["sum_b2"] - tp, n2 * c["sum_a2"] - tp)
    mutual = c["h_a"] + c["h_b"] - c["h_ab"]
    v_info = 2 * mutual / (c["h_a"] + c["h_b"]) if c["h_a"] > 0 and c["h_b"] > 0 else 0.0
    return v_rand, v_info


def aggregate(counts: list[dict[str, float]]) -> tuple[float, float]:
    """(V_rand, V_info) of a stack at one threshold: the mean of the per-slice scores."""
    scores = np.array([slice_scores(c) for c in counts], np.float64)
    return float(scores[:, 0].mean()), float(scores[:, 1].mean())


def pixel_fscore(prob: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """``PixelError.getPrecisionRecallStats``: interior F-score over the stack (counts summed over slices)."""
    p, t = prob > threshold, labels > 0
    return _fscore(float(np.sum(p & t)), float(np.sum(p & ~t)), float(np.sum(~p & t)))


def rand_info_at(prob: np.ndarray, gt_cells: np.ndarray, threshold: float) -> tuple[float, float]:
    """Stack (V_rand, V_info) of probabilities ``prob`` (N, H, W) binarised at ``threshold``."""
    return aggregate([slice_counts(thin(p > threshold), g) for p, g in zip(prob, gt_cells, strict=True)])


def ground_truth_cells(labels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """4-connected components of the interior (``labels > threshold``) of each slice; 0 = membrane."""
    return np.stack([components(lab > threshold, connectivity=1, background=0) for lab in labels])


def challenge_scores(prob: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The ISBI 2012 challenge protocol on a stack: best V_rand, V_info and pixel F-score over one
    threshold for the whole stack, with the thresholds chosen; ``pixel_error`` = 1 - the best F-score.

    Args:
        prob: (N, H, W) interior probabilities in [0, 1]. labels: (N, H, W) in {0, 1} (1 = interior).
    """
    prob = np.asarray(prob, np.float32).astype(np.float64)  # as ImageJ's convertToFloat, compared in double
    labels = np.asarray(labels)
    rows = []
    for t in THRESHOLDS:
        # the Java binarises the labels with the same threshold: {0, 1} labels stay themselves for t < 1
        gt = ground_truth_cells(labels, t)
        rows.append((*rand_info_at(prob, gt, t), pixel_fscore(prob, labels, t)))
    # the first maximum, as the Java keeps the first strictly better score starting from 0: NaN never wins
    table = np.nan_to_num(np.array(rows), nan=-1.0)
    best = table.argmax(axis=0)
    score = [max(float(table[best[i], i]), 0.0) for i in range(3)]
    return {
        "vrand": score[0],
        "vrand_threshold": round(THRESHOLDS[best[0]], 1),
        "vinfo": score[1],
        "vinfo_threshold": round(THRESHOLDS[best[1]], 1),
        "pixel_error": 1.0 - score[2],
        "pixel_error_threshold": round(THRESHOLDS[best[2]], 1),
    }


def fixed_scores(prob: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """V_rand and V_info of the stack at one fixed threshold (no choice of threshold on the labels)."""
    v_rand, v_info = rand_info_at(np.asarray(prob, np.float64), ground_truth_cells(labels), threshold)
    return {"vrand_fixed": v_rand, "vinfo_fixed": v_info}


def slice_metrics(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Per-slice metrics at the fixed ``threshold``: probabilities (H, W) of the interior, labels in {0, 1}."""
    out: dict[str, Any] = {"soft_dice": soft_dice(prob, labels), **overlap(prob > threshold, labels)}
    v_rand, v_info = slice_scores(slice_counts(thin(prob > threshold), ground_truth_cells(labels[None])[0]))
    return out | {"vrand_fixed": v_rand, "vinfo_fixed": v_info}


SLICE_METRICS = ("soft_dice", "dice", "iou", "dice_membrane", "mismatch", "vrand_fixed", "vinfo_fixed")
# what a fold reports to DVC (and what is summarised over folds): the challenge's scores first, then V_rand
# and V_info at the fixed threshold predictions use, then the threshold-free overlap. The other per-slice
# scores (dice, iou, dice_membrane, mismatch) stay in the per-slice table and the evaluation report: with
# them `dvc metrics show` would not fit a terminal, and they follow from the per-slice rows.
METRICS = ("vrand", "vinfo", "pixel_error", "vrand_fixed", "vinfo_fixed", "soft_dice")
LOWER_IS_BETTER = frozenset({"pixel_error"})


def stack_metrics(prob: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[dict[str, Any], list[dict]]:
    """Fold-level metrics of a stack and its per-slice rows.

    The challenge's scores and the fixed-threshold V_rand/V_info are computed on the stack as the
    challenge aggregates them; the overlap scores are means over slices.
    """
    rows = [slice_metrics(p, lab, threshold) for p, lab in zip(prob, labels, strict=True)]
    # the means of the per-slice rows: for vrand_fixed/vinfo_fixed that is the challenge's aggregation
    out: dict[str, Any] = {m: float(np.mean([r[m] for r in rows])) for m in SLICE_METRICS}
    out |= challenge_scores(prob, labels)
    return out, rows


def over_folds(per_fold: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Cross-validated estimate: mean and sample standard deviation over folds of every metric."""
    out: dict[str, Any] = {}
    for m in METRICS:
        vals = np.array([f[m] for f in per_fold.values()], np.float64)
        out[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    return out
