"""Your own data, end to end: a sparse, non-square uint16 stack through ``dvc repro`` and ``unet predict``.

Nothing ISBI-shaped: 200x260 slices of 16-bit grey values (a folder of single-slice TIFFs), labels 0/1 with
about 10% foreground (one slice without any), own file names, no checksums, the generic validation
bounds and two folds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet.folds import check_partition
from unet.presets import apply
from unet.results import read_metrics

from .conftest import TINY
from .test_pipeline import dvc, make_repo, run
from .test_validation import sparse_uint16

N, H, W = 10, 200, 260


def own_data(where: Path) -> Path:
    """``where/cells/0.tif .. 9.tif`` (uint16 slices) and ``where/masks.tif`` (a multi-page 0/1 stack)."""
    images, labels = sparse_uint16(N, H, W, seed=3)
    (where / "cells").mkdir(parents=True)
    for i, page in enumerate(images):
        tifffile.imwrite(where / "cells" / f"{i}.tif", page)
    tifffile.imwrite(where / "masks.tif", labels)
    return where


def _dotted(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out |= _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


@pytest.mark.slow
def test_own_stack_through_dvc_repro_and_predict(tmp_path):
    mine = own_data(tmp_path / "mine")
    repo = make_repo(tmp_path / "repo")
    apply(
        repo / "params.yaml",
        {
            "download.local_dir": str(mine),
            "download.urls": [],
            "download.slice_mirrors": [],
            "download.images": ["cells.tif"],
            "download.labels": "masks.tif",
            "download.pixel_sha256": {},
            "validate.min_foreground": 0.0,  # the generic bounds: sparse masks, any grey-value scale
            "validate.max_foreground": 1.0,
            "validate.min_relative_std": 0.01,
            "split.folds": [0, 1],
            "evaluate.overlays": 1,
            "register.dataset": "my cells",  # what the card names
            "register.foreground": "nuclei",
            **_dotted({k: TINY[k] for k in ("train", "runtime")}),
        },
    )
    r = dvc(repo, "repro")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("download", "validate", "split", "train@0", "train@1", "evaluate", "register"):
        assert f"Running stage '{stage}'" in r.stdout, stage

    raw = tifffile.imread(repo / "data" / "raw" / "cells.tif")  # the slice folder, stacked in natural order
    assert raw.dtype == np.uint16 and raw.shape == (N, H, W)
    assert np.array_equal(raw[9], tifffile.imread(mine / "cells" / "9.tif"))
    assert sorted(p.name for p in (repo / "data" / "raw").iterdir()) == ["cells.tif", "masks.tif"]
    report = json.loads((repo / "reports" / "validation.json").read_text())
    assert report["success"] and min(row["foreground"] for row in report["stats"]) == 0.0
    folds = json.loads((repo / "data" / "folds.json").read_text())
    check_partition(folds, N)
    per_fold = read_metrics(repo / "metrics")
    report = json.loads((repo / "reports" / "evaluation.json").read_text())["folds"]
    assert sorted(per_fold) == [0, 1]
    for k in (0, 1):
        assert report[f"fold{k}"]["slices"] == folds["folds"][k]["val"] and 0 <= report[f"fold{k}"]["mismatch"] <= 1
        assert all(0 <= per_fold[k][key] <= 1 for key in ("vrand", "vinfo", "pixel_error", "soft_dice"))
    model = repo / "models" / "registered" / "model.keras"
    card = json.loads((repo / "models" / "card.json").read_text())
    assert model.is_file() and card["folds"] and "ISBI" not in card["description"]
    assert card["dataset"] == "my cells" and "nuclei" in card["description"]

    for args, out in (([], "prob.tif"), (["--threshold", "0.5"], "masks.tif")):
        p = run(repo, "unet", "predict", str(mine / "cells"), str(tmp_path / out), "--models", str(model), *args)
        assert p.returncode == 0, p.stderr[-3000:]
    prob = tifffile.imread(tmp_path / "prob.tif")
    assert prob.shape == (N, H, W) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    masks = tifffile.imread(tmp_path / "masks.tif")
    assert masks.shape == (N, H, W) and len(np.unique(masks)) <= 2
    assert np.array_equal(masks > 0, prob > 0.5)
