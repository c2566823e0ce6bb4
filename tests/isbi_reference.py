"""Independent reference ("oracle") for the ISBI 2012 EM segmentation challenge scores.

A line-by-line NumPy / standard-library port of the official evaluation as it is
implemented in Fiji's Trainable_Segmentation plugin (Ignacio Arganda-Carreras), i.e.
what the challenge script "Segmentation evaluation after border thinning" calls:

    new RandError(labels, proposal).getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)
    new VariationOfInformation(labels, proposal).getMaximalVInfoAfterThinning(0.0, 1.0, 0.1)
    new PixelError(labels, proposal).getPixelErrorMaximalFScore(0.0, 1.0, 0.1)
        (ISBI "pixel error" = 1 - that maximal F-score)

Reference: Arganda-Carreras et al. (2015), "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Front. Neuroanat. 9:142.

Java sources this file was ported from (read from the code index):
  fiji/Trainable_Segmentation @ 0c1783d805e486187affaa3e06d719a6eaf6ed26
    src/main/java/trainableSegmentation/metrics/RandError.java
    src/main/java/trainableSegmentation/metrics/VariationOfInformation.java
    src/main/java/trainableSegmentation/metrics/PixelError.java
    src/main/java/trainableSegmentation/metrics/ClassificationStatistics.java
    src/main/java/trainableSegmentation/metrics/Metrics.java
    src/main/java/trainableSegmentation/utils/Utils.java            (connectedComponents)
    src/main/java/trainableSegmentation/utils/WatershedTransform2D.java
    src/main/java/trainableSegmentation/utils/PixelRecord.java       (sort order)
    src/main/java/trainableSegmentation/utils/Neighborhood2D{,C4}.java (neighbour order)
  fiji/VIB-lib @ e62eec4e216280171266d705f67feb93e2cea8e5
    src/main/java/util/FindConnectedRegions.java                    (used by Utils.connectedComponents)
  imagej/ImageJ @ fe6878a7d84c14845a8d940ec4aede641adb903b
    ij/process/TypeConverter.java                                    (convertFloatToShort, no scaling)

Conventions
-----------
* Arrays are indexed ``[y, x]`` (row, column).  ImageJ's ``x`` is the column.
* ``labels``: ground truth, 1/255 = cell interior, 0 = membrane (any values; the Java
  binarises them with ``value > threshold`` for V_rand / V_info and ``value > 0`` for the
  pixel error).
* ``proposal``: probability of *cell interior*; it is cast to float32 (ImageJ
  ``convertToFloat`` / a 32-bit TIFF) and compared as ``(double) value > threshold``.
  NB: the comparison is done in float64 on purpose (NumPy 2 would otherwise compare a
  float32 array with a Python float in float32: float32(0.1) > 0.1 is True in Java).

No scikit-image / scipy algorithm is used: connected components and the watershed are
written here from the Java.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "challenge_scores",
    "classification_statistics",
    "find_connected_regions",
    "java_thresholds",
    "pixel_stats",
    "rand_stats_n2",
    "thin_proposal",
    "vinfo_fscore",
    "vrand_vinfo_after_thinning",
    "watershed_transform_2d",
]


# ---------------------------------------------------------------------------------------
# Java arithmetic helpers (Java double division / Math.log never raise)
# ---------------------------------------------------------------------------------------


def _jdiv(a: float, b: float) -> float:
    """Java ``a / b`` for doubles (IEEE 754: x/0 = +-Inf, 0/0 = NaN)."""
    a = float(a)
    b = float(b)
    if b == 0.0:
        if a == 0.0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _jlog(x: float) -> float:
    """Java ``Math.log`` (log(0) = -Inf, log(<0) = NaN)."""
    x = float(x)
    if x != x or x < 0.0:
        return math.nan
    if x == 0.0:
        return -math.inf
    if x == math.inf:
        return math.inf
    return math.log(x)


def java_thresholds(min_threshold: float = 0.0, max_threshold: float = 1.0, step: float = 0.1) -> list[float]:
    """``for (double th = minThreshold; th <= maxThreshold; th += stepThreshold)``.

    With (0.0, 1.0, 0.1) floating accumulation gives 11 values, the last one being
    0.9999999999999999 (0.30000000000000004, 0.7999999999999999, ... in between).
    """
    out = []
    th = float(min_threshold)
    while th <= max_threshold:
        out.append(th)
        th += step
    return out


# ---------------------------------------------------------------------------------------
# 4-connected component labelling (own implementation: horizontal runs + union-find)
# ---------------------------------------------------------------------------------------


def _label_components(mask: np.ndarray, x_major: bool) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean ``[y, x]`` mask.

    Components are numbered 1..K in the order of their first pixel in the scan order:
    ``x_major=False``: y outer, x inner (raster order, FindConnectedRegions);
    ``x_major=True``: x outer, y inner (WatershedTransform2D's pixel list order).
    Returns (int64 labels with 0 = background, K).
    """
    mask = np.asarray(mask, dtype=bool)
    # scan order == C order of M
    M = np.ascontiguousarray(mask.T if x_major else mask)
    R, C = M.shape
    out = np.zeros((R, C), dtype=np.int64)
    if not M.any():
        return (out.T if x_major else out), 0
    # runs along the inner axis; a run starts where the previous inner pixel is off
    prev = np.zeros_like(M)
    prev[:, 1:] = M[:, :-1]
    starts = M & ~prev
    run_id = np.cumsum(starts.ravel(), dtype=np.int64).reshape(R, C)
    run_id[~M] = 0
    nruns = int(run_id.max())
    # 4-adjacency across the outer axis: same inner index, consecutive outer index
    both = M[:-1, :] & M[1:, :]
    a = run_id[:-1, :][both]
    b = run_id[1:, :][both]
    parent = list(range(nruns + 1))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if a.size:
        pairs = np.unique(a * (nruns + 1) + b)
        for u, v in zip((pairs // (nruns + 1)).tolist(), (pairs % (nruns + 1)).tolist(), strict=True):
            ru, rv = find(u), find(v)
            if ru != rv:
                # union by smallest run id: the root of a component is its first run in
                # scan order (run ids increase with the run's first pixel in C order)
                if ru < rv:
                    parent[rv] = ru
                else:
                    parent[ru] = rv
    roots = np.fromiter((find(i) for i in range(nruns + 1)), dtype=np.int64, count=nruns + 1)
    uniq = np.unique(roots[1:])  # ascending == order of first pixel in scan order
    rank = np.zeros(nruns + 1, dtype=np.int64)
    rank[1:] = np.searchsorted(uniq, roots[1:]) + 1
    out = rank[run_id]
    return (out.T if x_major else out), int(uniq.size)


def find_connected_regions(binary: np.ndarray) -> np.ndarray:
    """Port of ``Utils.connectedComponents(imp, 4).allRegions.getProcessor()``.

    Utils.connectedComponents -> FindConnectedRegions.run(im, diagonal=false,
    imagePerRegion=false, imageAllRegions=true, showResults=false, mustHaveSameValue=false,
    startFromPointROI=false, autoSubtract=false, valuesOverDouble=0,
    minimumPointsInRegionDouble=1, stopAfterNumberOfRegions=-1, noUI=true):
    pixels with value > 0 are grown into 4-connected regions; starting points are found
    in raster order (y outer, x inner), so region k is the k-th region met in that order;
    all regions are kept (min size 1) and written as ``(short) regionNumber`` into a
    16-bit image (read back with ``& 0xffff`` by the metrics -> modulo 65536).
    """
    lab, _ = _label_components(np.asarray(binary) > 0, x_major=False)
    return (lab & 0xFFFF).astype(np.uint16)


# ---------------------------------------------------------------------------------------
# WatershedTransform2D (Soille & Vincent flooding with watershed dams), connectivity 4
# ---------------------------------------------------------------------------------------

_MASK = -2  # initial value of a threshold level
_WSHED = 0  # value of pixels belonging to watersheds (dams)
_INIT = -1  # initial value of output pixels
_INQUEUE = -3  # value assigned to pixels put into the queue
_OUT = -9  # padding sentinel (out of bounds): not > 0, not WSHED, not MASK, < WSHED


def _flood_fifo(L: list, queue: list, S: int) -> None:
    """The ``while( !fifo.isEmpty() )`` loop of WatershedTransform2D.apply().

    ``L`` is the padded, x-major flattened tabLabels (index (x+1)*S + (y+1)); neighbours
    in Neighborhood2DC4 order: (x-1,y), (x,y-1), (x+1,y), (x,y+1).  Out-of-bounds
    neighbours hold _OUT, which fails every test exactly like the Java bounds check.
    The popped pixel's own label is kept in ``lp`` and written back after its four
    neighbours (a pixel is never its own neighbour, so this equals the in-place update).
    """
    INQ, WS, MSK = _INQUEUE, _WSHED, _MASK
    flag = False  # global flag of the Java code
    head = 0
    append = queue.append
    while head < len(queue):
        p = queue[head]
        head += 1
        lp = L[p]  # always INQUEUE when popped
        for c in (p - S, p - 1, p + S, p + 1):
            lc = L[c]
            if lc > 0:  # the neighbour belongs to an already labelled basin
                if lp == INQ or (lp == WS and flag):
                    lp = lc
                elif lp > 0 and lp != lc:
                    lp = WS
                    flag = False
            elif lc == WS:
                if lp == INQ:
                    lp = WS
                    flag = True
            elif lc == MSK:
                L[c] = INQ
                append(c)
        L[p] = lp


def watershed_transform_2d(image: np.ndarray) -> np.ndarray:
    """Port of ``new WatershedTransform2D(input, 4).apply()`` -> 32-bit label image.

    Returns int64 labels ``[y, x]``: basins 1..K, dams (WSHED) 0.

    Java structure (kept here):
      * extractPixelValues: x outer, y inner; every pixel with hMin <= h <= hMax.  The
        input here is a ByteProcessor whose getMin()/getMax() bracket all its values,
        so every pixel is in the list.  Collections.sort with PixelRecord.compareTo
        (value, then creation sequence) => ascending value, ties in x-major order.
      * for each grey level h (ascending):
          1. every pixel at h is set to MASK; in list order, a pixel with an in-bounds
             4-neighbour >= WSHED is appended to the FIFO and set to INQUEUE;
          2. FIFO propagation with dams and the global ``flag`` (_flood_fifo);
          3. in list order, every pixel still MASK starts a new basin (currentLabel++)
             flooded (FIFO) over 4-connected MASK pixels.
      * output: INIT -> 0, otherwise tabLabels.
    Vectorised steps (exactly equivalent, proved in the comments): in step 1 the only
    pixels >= WSHED are those of lower, already flooded levels (all of them are >= 0
    after their level; pixels at h are MASK/INQUEUE/INIT, higher ones INIT), so the queue
    is "pixels at h with a 4-neighbour at a lower level" in x-major order; step 3 is
    4-connected labelling of the remaining MASK pixels numbered by their first pixel in
    x-major order.  Step 2 is a literal Python loop.
    """
    img = np.asarray(image)
    H, W = img.shape
    T = np.ascontiguousarray(img.T)  # [x, y]; C order == Java's x-major pixel order
    S = H + 2
    Lpad = np.full((W + 2, H + 2), _OUT, dtype=np.int64)
    Lpad[1:-1, 1:-1] = _INIT
    lower = np.zeros((W, H), dtype=bool)  # pixels of already flooded (lower) levels
    current_label = 0
    for h in np.unique(T):  # ascending grey levels
        at_h = np.equal(T, h)
        Lin = Lpad[1:-1, 1:-1]
        # 1. MASK + initial queue (neighbours of lower levels), x-major order
        nb = np.zeros((W, H), dtype=bool)
        nb[1:, :] |= lower[:-1, :]  # (x-1, y)
        nb[:, 1:] |= lower[:, :-1]  # (x, y-1)
        nb[:-1, :] |= lower[1:, :]  # (x+1, y)
        nb[:, :-1] |= lower[:, 1:]  # (x, y+1)
        init_q = at_h & nb
        Lin[at_h] = _MASK
        Lin[init_q] = _INQUEUE
        xs, ys = np.nonzero(init_q)  # C order of [x, y] == x-major
        if xs.size:
            # 2. FIFO flooding (pure Python, literal port)
            queue = ((xs + 1) * S + (ys + 1)).tolist()
            L = Lpad.ravel().tolist()
            _flood_fifo(L, queue, S)
            Lpad = np.asarray(L, dtype=np.int64).reshape(W + 2, H + 2)
            Lin = Lpad[1:-1, 1:-1]
        # 3. new minima at level h
        rem = Lin == _MASK
        if rem.any():
            comp, k = _label_components(rem.T, x_major=True)  # comp is [y, x]
            Lin[rem] = comp.T[rem] + current_label
            current_label += k
        lower |= at_h
    out = Lpad[1:-1, 1:-1].T.copy()  # back to [y, x]
    out[out == _INIT] = 0  # "set unlabeled pixels to 0"
    return out


def _float_to_short_no_scaling(fp: np.ndarray) -> np.ndarray:
    """ImageJ ``convertToShortProcessor(false)`` of a FloatProcessor
    (TypeConverter.convertFloatToShort, doScaling = false):
    clamp to [0, 65535] then ``(short)(value + 0.5)``."""
    v = np.asarray(fp, dtype=np.float64)
    v = np.clip(v, 0.0, 65535.0)
    return np.floor(v + 0.5).astype(np.uint16)


def thin_proposal(proposal: np.ndarray, threshold: float) -> np.ndarray:
    """Border thinning of ``get...AfterThinningStatsN2`` / ``foregroundRestrictedScoreAfterThinningN2``:

        binaryProposal = proposal > th ? 0 : 255      // borders white
        new WatershedTransform2D(binaryProposal, 4).apply().convertToShortProcessor(false)

    Level 0 (proposal interior) is flooded first: each 4-connected interior component
    becomes a basin (numbered in x-major order of its first pixel).  Level 255 (proposal
    border) is then flooded from those basins; border pixels where two basins meet become
    dams with label 0 (= "background" column j = 0 of the metrics, treated as
    singletons), the others join a basin.  If the proposal has no interior at all, the
    whole border level becomes one new basin.
    """
    p = np.asarray(proposal, dtype=np.float32).astype(np.float64)
    binary = np.where(p > threshold, 0, 255).astype(np.uint8)
    return _float_to_short_no_scaling(watershed_transform_2d(binary))


def _gt_components(labels: np.ndarray, threshold: float) -> np.ndarray:
    """``binaryLabel = label > th ? 255 : 0`` then Utils.connectedComponents(.., 4)."""
    lab = np.asarray(labels, dtype=np.float32).astype(np.float64)
    return find_connected_regions(lab > threshold)


# ---------------------------------------------------------------------------------------
# Scores from the two label images (ShortProcessor versions of the Java methods)
# ---------------------------------------------------------------------------------------


def _overlap_entries(cluster1: np.ndarray, cluster2: np.ndarray):
    """Non-zero cells (i, j, count) of the overlap matrix ``pij[pixels1 & 0xffff][pixels2 & 0xffff]++``,
    sorted by (i, j) -- the Java loop order (i outer, j inner).  Skipping empty cells is
    exact: they add +0.0 to every Java sum (for n > 0)."""
    a = np.asarray(cluster1, dtype=np.int64).ravel()
    b = np.asarray(cluster2, dtype=np.int64).ravel()
    nb = int(b.max()) + 1
    keys = a * nb + b
    size = (int(a.max()) + 1) * nb
    if size <= (1 << 23):
        counts = np.bincount(keys, minlength=size)
        cells = np.flatnonzero(counts)
        cnt = counts[cells]
    else:
        cells, cnt = np.unique(keys, return_counts=True)
    n = float(np.count_nonzero(a))  # n: number of non-background pixels in the ground truth
    return (cells // nb).tolist(), (cells % nb).tolist(), cnt.tolist(), n


def _marginals(entries):
    """Shared part of RandError.getForegroundRestrictedRandIndexStatsN2 and
    VariationOfInformation.foregroundRestrictedFscore:
      pij /= n;  ai[i] = sum_j pij[i][j] (i >= 1, j >= 0);
      bj[j] = sum_{i>=1} pij[i][j] (j >= 1);  aux = sum_{i>=1} pij[i][0].
    Returns (ai dict, bj dict, aux, list of pij for i>=1, j>=1 in (i, j) order)."""
    ii, jj, cc, n = entries
    ai: dict[int, float] = {}
    bj: dict[int, float] = {}
    aux = 0.0
    pin = []
    for i, j, c in zip(ii, jj, cc, strict=True):
        p = _jdiv(float(c), n)
        if i >= 1:
            ai[i] = ai.get(i, 0.0) + p
            if j >= 1:
                bj[j] = bj.get(j, 0.0) + p
                pin.append(p)
            else:
                aux += p
    return ai, bj, aux, pin


def classification_statistics(tp: float, tn: float, fp: float, fn: float, metric_value: float) -> dict:
    """Port of the ClassificationStatistics constructor."""
    total_negatives = tn + fp
    specificity = _jdiv(tn, total_negatives) if total_negatives > 0 else 0.0
    precision = 1.0 if fp == 0 else _jdiv(tp, tp + fp)  # no false positives -> max precision
    recall = 1.0 if fn == 0 else _jdiv(tp, tp + fn)  # no false negatives -> max recall
    fscore = 0.0  # field default
    if (precision + recall) > 0:
        fscore = _jdiv(2.0 * precision * recall, precision + recall)
    return {
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "metric": metric_value,
        "precision": precision,
        "recall": recall,
        "fscore": fscore,
        "specificity": specificity,
    }


def rand_stats_n2(cluster1: np.ndarray, cluster2: np.ndarray, _entries=None) -> dict:
    """Port of ``RandError.getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor)``.

    Foreground-restricted (GT background rows dropped), N^2-normalised Rand statistics;
    proposal background (j = 0, i.e. the dams after thinning) counted as singletons via
    ``+ aux / n`` in sumB2 and sumAB2.  V_rand of the slice is the returned "fscore".
    """
    entries = _entries if _entries is not None else _overlap_entries(cluster1, cluster2)
    n = entries[3]
    ai, bj, aux, pin = _marginals(entries)
    sumA2 = 0.0
    for i in sorted(ai):
        sumA2 += ai[i] * ai[i]
    sumB2 = 0.0
    for j in sorted(bj):
        sumB2 += bj[j] * bj[j]
    sumB2 += _jdiv(aux, n)
    sumAB2 = 0.0
    for p in pin:
        sumAB2 += p * p
    sumAB2 += _jdiv(aux, n)
    n2 = n * n
    tp = n2 * sumAB2  # true positives
    fp = n2 * sumB2 - tp  # false positives
    fn = n2 * sumA2 - tp  # false negatives
    tn = n2 - tp - fp - fn  # true negatives
    rand_error = _jdiv(fp + fn, n2)
    return classification_statistics(tp, tn, fp, fn, 1 - rand_error)


def vinfo_fscore(cluster1: np.ndarray, cluster2: np.ndarray, _entries=None) -> float:
    """Port of ``VariationOfInformation.foregroundRestrictedFscore(ShortProcessor, ShortProcessor)``
    (the information theoretic score V_info of one slice)."""
    entries = _entries if _entries is not None else _overlap_entries(cluster1, cluster2)
    n = entries[3]
    ai, bj, aux, pin = _marginals(entries)
    sumA = 0.0
    for i in sorted(ai):
        if ai[i] != 0:
            sumA += ai[i] * _jlog(ai[i])
    sumB = 0.0
    for j in sorted(bj):
        if bj[j] != 0:
            sumB += bj[j] * _jlog(bj[j])
    sumB -= aux * _jlog(n)
    sumAB = 0.0
    for p in pin:
        if p != 0:
            sumAB += p * _jlog(p)
    sumAB -= aux * _jlog(n)
    ha = -sumA  # H(A)
    hb = -sumB  # H(B)
    hab = sumB - sumAB  # H(A|B)
    hba = sumA - sumAB  # H(B|A)
    prec = _jdiv(ha - hab, ha)  # C(A|B)
    rec = _jdiv(hb - hba, hb)  # C(B|A)
    if ha == 0:
        prec = 0.0
        rec = 1.0
    if hb == 0:
        prec = 1.0
        rec = 0.0
    return _jdiv(2.0 * prec * rec, prec + rec)  # F-score (NaN possible, as in Java)


def vrand_vinfo_after_thinning(labels: np.ndarray, proposal: np.ndarray, threshold: float) -> tuple[float, float]:
    """One 2D slice at one threshold:
    V_rand = RandError.getForegroundRestrictedRandAfterThinningStatsN2(label, proposal, th).fScore
    V_info = VariationOfInformation.foregroundRestrictedScoreAfterThinningN2(label, proposal, th)
    """
    c1 = _gt_components(labels, threshold)
    c2 = thin_proposal(proposal, threshold)
    entries = _overlap_entries(c1, c2)
    return rand_stats_n2(c1, c2, entries)["fscore"], vinfo_fscore(c1, c2, entries)


def pixel_stats(labels: np.ndarray, proposal: np.ndarray, threshold: float) -> dict:
    """Port of ``PixelError.precisionRecallStats(label, proposal, th)`` (one slice):
    pix1 = label > 0, pix2 = (double) proposal > th; positive class = 1 (cell interior)."""
    pix1 = np.asarray(labels, dtype=np.float32) > 0
    pix2 = np.asarray(proposal, dtype=np.float32).astype(np.float64) > threshold
    tp = float(np.count_nonzero(pix2 & pix1))
    fp = float(np.count_nonzero(pix2 & ~pix1))
    fn = float(np.count_nonzero(~pix2 & pix1))
    tn = float(np.count_nonzero(~pix2 & ~pix1))
    pixel_error = _jdiv(fp + fn, pix1.size)
    return classification_statistics(tp, tn, fp, fn, pixel_error)


# ---------------------------------------------------------------------------------------
# Stack level: thresholds, slice aggregation, maxima
# ---------------------------------------------------------------------------------------


def _as_stack(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a


def _best(scores: list[float], thresholds: list[float]) -> tuple[float, float]:
    """``maxScore = 0; for (s : scores) if (s > maxScore) maxScore = s`` and the logged
    ``bestTh`` (initialised to minThreshold, updated on strict improvement)."""
    best, best_th = 0.0, thresholds[0]
    for s, th in zip(scores, thresholds, strict=True):
        if s > best:  # NaN never wins, as in Java
            best, best_th = s, th
    return best, best_th


def challenge_scores(
    labels_stack: np.ndarray,
    proposal_stack: np.ndarray,
    min_threshold: float = 0.0,
    max_threshold: float = 1.0,
    step: float = 0.1,
) -> dict:
    """ISBI 2012 scores of a stack (or one 2D slice), as the Fiji code computes them.

    Aggregation (from the Java):
      * V_rand: getMaximalVRandAfterThinning(min, max, step, perSliceAverage=true):
        per threshold, the per-slice F-scores (ClassificationStatistics.fScore of
        getForegroundRestrictedRandIndexStatsN2 after thinning) are summed and divided by
        the number of slices (macro average; the summed TP/FP/FN are NOT used because
        perSliceAverage = true overwrites cs.fScore); then the maximum over thresholds.
      * V_info: getMaximalVInfoAfterThinning: per threshold, the mean over slices of the
        per-slice score (getForegroundRestrictedScoreAfterThinning = sum / nSlices);
        then the maximum over thresholds.
      * pixel error: getPixelErrorMaximalFScore: per threshold TP/TN/FP/FN are summed
        over slices (micro average) and one F-score is computed; the maximum over
        thresholds is taken; ISBI pixel error = 1 - max F-score.
    Maxima start at 0 and only strictly larger values replace them (NaN never wins); the
    reported threshold is the first one reaching the maximum (0.0 if none beats 0).
    """
    labels_stack = _as_stack(labels_stack)
    proposal_stack = _as_stack(np.asarray(proposal_stack, dtype=np.float32))
    if labels_stack.shape != proposal_stack.shape:
        raise ValueError(f"shape mismatch {labels_stack.shape} vs {proposal_stack.shape}")
    thresholds = java_thresholds(min_threshold, max_threshold, step)
    n_slices = labels_stack.shape[0]
    labels_f = labels_stack.astype(np.float32).astype(np.float64)
    props_f = proposal_stack.astype(np.float64)

    vrand_per_th, vinfo_per_th, pixel_per_th = [], [], []
    gt_cache: list[dict] = [dict() for _ in range(n_slices)]
    thin_cache: list[dict] = [dict() for _ in range(n_slices)]
    for th in thresholds:
        f_rand = 0.0
        f_info = 0.0
        tp = tn = fp = fn = 0.0
        pe = 0.0
        for z in range(n_slices):
            gt_mask = labels_f[z] > th
            key = np.packbits(gt_mask).tobytes()
            c1 = gt_cache[z].get(key)
            if c1 is None:
                c1 = gt_cache[z][key] = find_connected_regions(gt_mask)
            inside = props_f[z] > th
            key = np.packbits(inside).tobytes()
            c2 = thin_cache[z].get(key)
            if c2 is None:
                binary = np.where(inside, 0, 255).astype(np.uint8)
                c2 = thin_cache[z][key] = _float_to_short_no_scaling(watershed_transform_2d(binary))
            entries = _overlap_entries(c1, c2)
            f_rand += rand_stats_n2(c1, c2, entries)["fscore"]
            f_info += vinfo_fscore(c1, c2, entries)
            cs = pixel_stats(labels_stack[z], proposal_stack[z], th)
            tp += cs["tp"]
            tn += cs["tn"]
            fp += cs["fp"]
            fn += cs["fn"]
            pe += cs["metric"]
        vrand_per_th.append(f_rand / n_slices)
        vinfo_per_th.append(f_info / n_slices)
        pixel_per_th.append(classification_statistics(tp, tn, fp, fn, pe / n_slices)["fscore"])

    vrand, vrand_th = _best(vrand_per_th, thresholds)
    vinfo, vinfo_th = _best(vinfo_per_th, thresholds)
    pix_f, pix_th = _best(pixel_per_th, thresholds)
    return {
        "vrand": vrand,
        "vrand_threshold": vrand_th,
        "vinfo": vinfo,
        "vinfo_threshold": vinfo_th,
        "pixel_fscore": pix_f,
        "pixel_error": 1.0 - pix_f,
        "pixel_threshold": pix_th,
        "thresholds": thresholds,
        "vrand_per_threshold": vrand_per_th,
        "vinfo_per_threshold": vinfo_per_th,
        "pixel_fscore_per_threshold": pixel_per_th,
    }
