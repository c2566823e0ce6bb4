"""Model registry: choose the model(s) to publish and write their card with the cross-validated estimate.

The card never reports the best fold's score as the model's: the estimate of a model trained this way is
the mean and standard deviation over folds of each fold's score on its own held-out slices. Releasing
(a commit plus GTO tags) is a separate, explicit step: :mod:`unet.release`.
"""

from __future__ import annotations

from typing import Any

from unet.config import RegisterConfig
from unet.folds import fold_name
from unet.metrics import LOWER_IS_BETTER, METRICS, over_folds


def choose(per_fold: dict[int, dict[str, Any]], cfg: RegisterConfig) -> list[int]:
    """The folds whose models are published: the best by ``cfg.metric``, or all of them."""
    if cfg.metric not in METRICS:
        raise ValueError(f"register.metric: invalid value {cfg.metric!r}: must be one of {list(METRICS)}")
    if cfg.select == "ensemble":
        return sorted(per_fold)
    sign = -1 if cfg.metric in LOWER_IS_BETTER else 1
    return [max(per_fold, key=lambda k: sign * per_fold[k][cfg.metric])]


def caveat(folds: list[int], per_fold: dict[int, dict[str, Any]], cfg: RegisterConfig, slices: int) -> str:
    """What the card's numbers mean for the published model, in one sentence (``slices``: the chosen fold's)."""
    k = len(per_fold)
    if len(folds) > 1:
        return (
            f"Ensemble of the {len(folds)} fold models; each member was validated only on its own held-out fold, "
            f"so the ensemble itself has no held-out score: the estimate is the {k}-fold cross-validated "
            "score of a single model trained this way (an ensemble usually does at least as well)."
        )
    return (
        f"Fold {folds[0]}'s model, picked as the best of {k} by {cfg.metric} on its own held-out slices: "
        f"that pick is optimistic ({cfg.metric} {per_fold[folds[0]][cfg.metric]:.4f} on "
        f"{slices} slices); the estimate is the {k}-fold cross-validated score."
    )


def describe(folds: list[int], cv: dict[str, Any], k: int, cfg: RegisterConfig) -> str:
    """One line for the card and the GTO annotation: what the model is, on what data, and its CV scores."""
    what = f"fold {folds[0]} (best of {k})" if len(folds) == 1 else f"ensemble of {len(folds)} folds"
    shown = ("vrand", "vinfo", "pixel_error", "soft_dice")
    scores = ", ".join(f"{m} {cv[m]['mean']:.4f} ± {cv[m]['std']:.4f}" for m in shown)
    return (
        f"U-Net (Ronneberger 2015) for the {cfg.foreground} (probability) in {cfg.dataset}, {what}; "
        f"{k}-fold CV: {scores}"
    )


def card(
    cfg: RegisterConfig,
    per_fold: dict[int, dict[str, Any]],
    folds: list[int],
    digest: str,
    files: dict[str, str],
    provenance: dict[str, Any],
    evaluation: dict[str, Any],
    digests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The model card: what was published, from which run, its cross-validated estimate and what it means.

    Args:
        digest: sha256 of the published ``model.keras``. files: the published files.
        provenance: experiment, preset, steps and commit of the run that trained it.
        evaluation: the evaluate stage's report (:mod:`unet.results`).
        digests: sha256 of each published model file by file name (``model.keras``, ``model.onnx``).
    """
    cv = over_folds(per_fold)
    chosen = evaluation["folds"].get(fold_name(folds[0]), {})
    return {
        "name": cfg.name,
        "description": describe(folds, cv, len(per_fold), cfg),
        "dataset": cfg.dataset,
        "foreground": cfg.foreground,
        "trained": provenance,
        "folds": folds,
        "select": cfg.select,
        "metric": cfg.metric,
        "cross_validated": {"folds": len(per_fold), **cv},
        "caveat": caveat(folds, per_fold, cfg, len(chosen.get("slices", []))),
        "selected_fold_metrics": {k: per_fold[k] for k in folds} if len(folds) == 1 else {},
        "sha256": digest,
        "files": files,
        "sha256_of": digests or {"model.keras": digest},
    }


def page(card: dict[str, Any], geometry: dict[str, int], test_slice: int) -> str:
    """The card as the bioimage.io package's documentation page (markdown): the data, the cross-validated
    scores and their protocol, the caveat, and how to run the package. ``geometry``: the model's tiles
    (:func:`unet.bioimageio.tile_sizes`); ``test_slice``: the held-out slice the test tile was cut from."""
    cv = card["cross_validated"]
    rows = "\n".join(f"| {m} | {v['mean']:.4f} ± {v['std']:.4f} |" for m, v in cv.items() if isinstance(v, dict))
    g = geometry
    members = " (the ensemble's other members trained on it)" if len(card["folds"]) > 1 else ""
    return f"""# {card["name"]}

{card["description"]}

## Training data
{card["dataset"]}: grey images with binary labels, label 1 = {card["foreground"]}. The model outputs the
probability of {card["foreground"]} for each pixel.

## Validation
{cv["folds"]}-fold cross-validation: the slices are partitioned into {cv["folds"]} folds, a model is trained on
each fold's training slices and scored on its own held-out slices only; the table shows the mean ± standard
deviation over folds. `vrand`, `vinfo` and `pixel_error` follow the ISBI 2012 challenge's own code: V_rand and
V_info (foreground-restricted Rand and information-theoretic scores after border thinning) and the pixel error
(1 - the best pixel F-score), each at the one threshold for the whole stack that the challenge's protocol
picks; `vrand_fixed`, `vinfo_fixed` are the same at one fixed threshold (the evaluate stage's, 0.5 by default);
`soft_dice` is the soft Dice of the probabilities. Lower is better for `pixel_error`, higher for the others.

| metric | mean ± std over folds |
|---|---|
{rows}

{card["caveat"]}

The test tensors are a tile of slice {test_slice}, held out from fold {card["folds"][0]}'s model{members}.

## How to use
The input is the raw grey values of a 2D image (the stack's own data type; the preprocessing maps them to the
network's scale), axes batch, y, x, channel. Any side of {g["min"]} + {g["step"]}·n px is accepted. Each side
of the network's output loses {g["halo"]} px of context: the output is declared with a halo of {g["halo"]} px,
so bioimage.io tools pad each input block by it (symmetrically) and crop it from the output. Blocks of the
model's own tile ({g["tile"]} px, for images at least that large) follow the grid of the project's overlap-tile
prediction (`unet predict`), all but the last block of each axis. For example with bioimageio.core in Python:

```python
from bioimageio.core import predict
blocks = {{"grey": {{"y": {g["tile"]}, "x": {g["tile"]}}}}}
sample = predict(model="bioimageio.zip", inputs=image[None, :, :, None], input_block_shape=blocks)
probability = sample.members["probability"].data.values[0, :, :, 0]  # image: (h, w) raw grey values
```
"""
