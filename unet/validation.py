"""Per-slice statistics of an image/label pair, checked by a Great Expectations 1.x suite.

The statistics table has one row per slice (union of image and label slices, so a count mismatch
shows up as rows with missing values). Grey-value spread is judged relative to the stack's own range, so
the same bounds fit uint8, uint16 and float stacks of any scale. Great Expectations is imported lazily: it
is slow to import.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from unet.config import ValidateConfig

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """At least one expectation failed; ``report`` holds every result."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def grey_range(images: np.ndarray) -> float:
    """The stack's grey-value range: 1st to 99th percentile (robust to hot pixels), else max - min."""
    lo, hi = (float(v) for v in np.percentile(images, (1, 99)))
    if hi <= lo:
        lo, hi = float(images.min()), float(images.max())
    return hi - lo


def slice_stats(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per slice: shape, dtype, grey statistics (``relative_std`` = std / :func:`grey_range`),
    the number of label values and the foreground fraction (the stack's larger label value)."""
    scale = grey_range(images) if images.size else 0.0
    rows = []
    for i in range(max(len(images), len(labels))):
        row: dict[str, Any] = {"slice": i}
        if i < len(images):
            im = images[i].astype(np.float64)
            row |= {
                "height": im.shape[0],
                "width": im.shape[1],
                "dtype": str(images.dtype),
                "min": im.min(),
                "max": im.max(),
                "mean": im.mean(),
                "std": im.std(),
                "relative_std": im.std() / scale if scale > 0 else 0.0,
                "finite": bool(np.isfinite(im).all()),
            }
        if i < len(labels):
            lab = labels[i]
            values = np.unique(lab)
            row |= {
                "label_height": lab.shape[0],
                "label_width": lab.shape[1],
                "label_values": len(values),
                "foreground": float((lab == labels.max()).mean()),
            }
        rows.append(row)
    cols = [
        "slice",
        "height",
        "width",
        "dtype",
        "min",
        "max",
        "mean",
        "std",
        "relative_std",
        "finite",
        "label_height",
        "label_width",
        "label_values",
        "foreground",
    ]
    return pd.DataFrame(rows).reindex(columns=cols)


GREY_DTYPES = ["uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32", "float64"]


def expectations(cfg: ValidateConfig, n_images: int) -> list[Any]:
    """The suite's expectations, in the order they are reported."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToEqual(value=n_images),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("height", "label_height")],
        gxe.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="label_height"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="label_width"),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=GREY_DTYPES),
        gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        # a slice may be all background (or all foreground): the foreground bounds decide whether that is ok
        gxe.ExpectColumnValuesToBeInSet(column="label_values", value_set=[1, 2]),
        gxe.ExpectColumnValuesToBeBetween(column="relative_std", min_value=cfg.min_relative_std),
        gxe.ExpectColumnValuesToBeBetween(
            column="foreground", min_value=cfg.min_foreground, max_value=cfg.max_foreground
        ),
    ]


def validate(stats: pd.DataFrame, cfg: ValidateConfig, n_images: int) -> dict[str, Any]:
    """Run the suite on ``stats`` in an ephemeral context; return the report or raise ValidationFailed."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)  # before the import, which logs ~200 lines
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations.")]:
        logging.getLogger(name).setLevel(logging.ERROR)  # some of its modules set INFO on their own logger

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas("slices")
        .add_dataframe_asset("stats")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": stats})
    )
    suite = gx.ExpectationSuite(name="isbi_slices")
    for exp in expectations(cfg, n_images):
        suite.add_expectation(exp)
    res = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    results = []
    for r in res.results:
        conf = r.expectation_config
        assert conf is not None  # GX sets it on every result of a suite run
        kwargs = {k: v for k, v in conf.kwargs.items() if k not in ("batch_id", "result_format")}
        bad = r.result.get("unexpected_index_list") or []
        rows = sorted({int(stats.loc[i["index"] if isinstance(i, dict) else i, "slice"]) for i in bad})
        results.append(
            {
                "expectation": conf.type,
                "kwargs": kwargs,
                "success": bool(r.success),
                "failing_slices": rows,
                "observed": _plain(r.result.get("observed_value")),
            }
        )
    report = {
        "success": bool(res.success),
        "slices": len(stats),
        "results": results,
        "stats": stats.to_dict(orient="records"),
    }
    if not res.success:
        failed = [r for r in results if not r["success"]]
        raise ValidationFailed("; ".join(describe(r) for r in failed), report)
    return report


def describe(result: dict[str, Any]) -> str:
    """One human-readable clause for a result: the expectation, its column and the failing slices."""
    kw = result["kwargs"]
    what = kw.get("column") or "/".join(str(kw[k]) for k in ("column_A", "column_B") if k in kw) or "table"
    bounds = {k: v for k, v in kw.items() if k not in ("column", "column_A", "column_B")}
    where = f" at slices {spans(result['failing_slices'])}" if result["failing_slices"] else ""
    seen = f" (observed {result['observed']})" if result["observed"] is not None else ""
    return f"{result['expectation']} on {what} {bounds} failed{where}{seen}"


def spans(idx: list[int], most: int = 12) -> str:
    """Slice indices as compact runs, ``0-4, 7, 9-12``; past ``most`` runs, the count of the rest."""
    runs: list[list[int]] = []
    for i in sorted(idx):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs[:most])
    return text + (f", ... ({len(idx)} slices in all)" if len(runs) > most else "")


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
