import subprocess
import sys

import pytest
import tifffile
import yaml

from unet.folds import check_partition, kfold

from .conftest import ROOT, synthetic


@pytest.mark.parametrize(("n", "k"), [(30, 5), (30, 4), (7, 3), (5, 5), (2, 2)])
def test_exact_partition(n, k):
    folds = kfold(n, k, seed=1)
    check_partition(folds, n)
    vals = [f["val"] for f in folds["folds"]]
    assert sorted(i for v in vals for i in v) == list(range(n))  # each slice validated exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    assert folds["k"] == k and folds["seed"] == 1


def test_seeded():
    assert kfold(30, 5, 3) == kfold(30, 5, 3)
    assert kfold(30, 5, 3) != kfold(30, 5, 4)


@pytest.mark.parametrize("k", [1, 0])
def test_bad_k(k):
    with pytest.raises(ValueError, match=rf"split.folds: invalid value {k} folds: need at least 2"):
        kfold(30, k, 0)


@pytest.mark.parametrize(("n", "k", "m", "most"), [(9, 5, 2, 4), (4, 5, 1, 4), (30, 31, 1, 30)])
def test_too_few_slices_per_fold(n, k, m, most):
    with pytest.raises(ValueError) as err:
        kfold(n, k, 0, min_slices=m, what="labels.tif")
    assert str(err.value) == (
        f"split.folds: {k} folds of at least {m} validation slice{'s' * (m > 1)} (split.min_slices_per_fold) "
        f"need {k * m} labelled slices; labels.tif has {n}: use fewer folds (at most {most}) or add slices"
    )
    assert min(len(f["val"]) for f in kfold(k * m, k, 0, min_slices=m)["folds"]) == m  # the boundary passes


def test_split_stage_fails_in_one_line_with_no_output(tmp_path):
    _, labels = synthetic(n=7, size=16)
    (tmp_path / "raw").mkdir()
    tifffile.imwrite(tmp_path / "raw" / "labels.tif", labels)  # the default download.labels
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"split": {"folds": [0, 1, 2, 3], "min_slices_per_fold": 2}}))
    cmd = [sys.executable, "-m", "unet.stages.split", "--params", str(params), "--raw", str(tmp_path / "raw")]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "folds.json")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"split: error: split.folds: 4 folds of at least 2 validation slices (split.min_slices_per_fold) need 8 "
        f"labelled slices; {tmp_path / 'raw' / 'labels.tif'} has 7: use fewer folds (at most 3) or add slices"
    ]
    assert not (tmp_path / "folds.json").exists()


def test_check_partition_rejects_overlap():
    folds = kfold(6, 2, 0)
    folds["folds"][1]["val"] = folds["folds"][0]["val"]
    with pytest.raises(ValueError, match="partition"):
        check_partition(folds, 6)
