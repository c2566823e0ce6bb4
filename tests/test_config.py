import pytest
import yaml

from unet import config
from unet.config import Config, from_dict
from unet.presets import PRESETS, apply

from .conftest import ROOT


def test_params_yaml_loads_and_is_the_gpu_recipe():
    cfg = config.load(ROOT / "params.yaml")
    assert cfg == Config()
    assert (cfg.train.model.base_filters, cfg.train.model.tile, cfg.train.batch_size) == (64, 572, 8)
    assert (cfg.train.max_steps, cfg.train.learning_rate, cfg.split.k) == (6400, 1e-4, 5)


def _dotted(data, prefix=""):
    for k, v in data.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _dotted(v, prefix + k + ".")


def test_every_dvc_param_exists_and_matrix_matches_k():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    known = set(_dotted(params))
    for name, stage in dvc["stages"].items():
        for key in stage.get("params", []):
            assert key in known, f"{name}: params key {key} not in params.yaml"
    k = config.load(ROOT / "params.yaml").split.k
    assert dvc["stages"]["train"]["matrix"]["fold"] == list(range(k))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train": {"bogus": 1}}, r"train\.bogus: unknown key"),
        ({"nope": {}}, r"nope: unknown key"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: invalid value 0"),
        ({"train": {"batch_size": "8"}}, r"train\.batch_size: invalid value '8'"),
        ({"train": {"model": {"tile": 570}}}, r"train\.model\.tile: invalid value 570.*556 or 572"),
        ({"runtime": {"precision": "fp8"}}, r"runtime\.precision: invalid value 'fp8'"),
        ({"split": {"k": 1}}, r"split\.k: invalid value 1"),
        ({"download": {"urls": ["ftp://x"]}}, r"download\.urls: invalid value 'ftp://x'"),
        ({"train": {"checkpoint_every": 150}}, r"train\.checkpoint_every: invalid value 150"),
    ],
)
def test_bad_params_name_the_key_and_value(data, match):
    with pytest.raises(ValueError, match=match):
        from_dict(Config, data)


def test_cpu_preset_applies_in_place_and_keeps_comments(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    apply(p, PRESETS["cpu"])
    cfg = config.load(p)
    assert (cfg.train.model.base_filters, cfg.train.model.depth, cfg.runtime.precision) == (8, 4, "float32")
    assert "# Every hyperparameter" in p.read_text()
    with pytest.raises(ValueError, match=r"train\.model\.tile"):
        apply(p, {"train.model.tile": 189})
    assert config.load(p) == cfg  # a rejected preset leaves the file as it was


def test_unreadable_params_file_is_a_value_error(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(ValueError, match="cannot read params"):
        config.load(p)
