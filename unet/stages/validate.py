"""validate stage: per-slice statistics checked by a Great Expectations suite; fails fast on any violation.

Writes ``reports/validation.json`` (every expectation and the statistics table) and a short Markdown
summary only when the data passes; a failure prints each failed expectation with its slices and exits 1.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unet.config import Config
from unet.io import check_labels, read_stack
from unet.outputs import atomic_path, write_json
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    from unet.validation import ValidationFailed, describe, slice_stats, validate

    raw = Path(args.raw)
    images = read_stack(raw / cfg.download.images[0])
    labels = read_stack(raw / cfg.download.labels)
    stats = slice_stats(images, labels)
    try:
        report = validate(stats, cfg.validate, n_images=len(images))
    except ValidationFailed as exc:
        for r in exc.report["results"]:
            if not r["success"]:
                log.error("FAILED %s", describe(r))
        raise ValidationFailed(
            f"{raw / cfg.download.labels}: validation of {len(images)} slices failed: {exc}", exc.report
        ) from None
    check_labels(labels, str(raw / cfg.download.labels))  # each slice may hold one value; the stack two
    write_json(args.report, report)
    with atomic_path(args.summary) as tmp:
        tmp.write_text(summary(report))
    log.info("%d slices, %d expectations passed -> %s", report["slices"], len(report["results"]), args.report)


def summary(report: dict) -> str:
    """A short Markdown table of the expectations and their outcome."""
    lines = [
        "# Data validation",
        "",
        f"{report['slices']} slices, all expectations passed.",
        "",
        "| expectation | column | observed |",
        "| --- | --- | --- |",
    ]
    for r in report["results"]:
        kw = r["kwargs"]
        col = kw.get("column") or "/".join(str(kw[k]) for k in ("column_A", "column_B") if k in kw) or "table"
        lines.append(f"| {r['expectation']} | {col} | {r['observed'] if r['observed'] is not None else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = _cli.parser("validate", __doc__)
    p.add_argument("--raw", required=True, help="directory of the downloaded stacks")
    p.add_argument("--report", required=True, help="every expectation and the statistics (JSON)")
    p.add_argument("--summary", required=True, help="a short Markdown table of the outcome")
    _cli.run("validate", main, p.parse_args(), outputs=("report", "summary"))
