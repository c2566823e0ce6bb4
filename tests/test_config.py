import ast
import dataclasses
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from unet import config
from unet.config import Config, from_dict
from unet.presets import PRESETS, apply

from .conftest import ROOT, project_params

# What params.yaml adds to the generic defaults for ISBI 2012: its sources, stacks and pixel hashes
ISBI_DOWNLOAD = ("urls", "slice_mirrors", "images", "labels", "pixel_sha256")


def test_params_yaml_loads_and_the_committed_one_is_the_gpu_recipe():
    config.load(ROOT / "params.yaml")  # the workspace copy (maybe an experiment's) is valid too
    cfg = config.loads(project_params())
    isbi_ranges = config.ValidateConfig(min_foreground=0.3, max_foreground=0.95, min_relative_std=0.05)
    isbi = dataclasses.replace(
        Config().register, dataset=cfg.register.dataset, foreground="cell interior", authors=("unet-medical",)
    )
    data = dataclasses.replace(Config().download, **{k: getattr(cfg.download, k) for k in ISBI_DOWNLOAD})
    assert cfg == Config(download=data, validate=isbi_ranges, register=isbi)  # the defaults: any data
    assert "ISBI 2012" in cfg.register.dataset
    assert (cfg.train.model.base_filters, cfg.train.model.tile, cfg.train.batch_size) == (64, 572, 8)
    assert (cfg.train.max_steps, cfg.train.learning_rate, cfg.split.k) == (6400, 1e-4, 5)
    assert (cfg.train.model.dropout, cfg.train.model.up) == (0.5, "upconv2x2")  # the authors' network


def test_params_yaml_is_the_only_isbi_catalogue():
    isbi = config.loads(project_params()).download
    assert isbi.files == ("train-volume.tif", "train-labels.tif", "test-volume.tif")
    assert set(isbi.pixel_sha256) == set(isbi.files) and len(isbi.slice_mirrors) == 2
    assert any("brainiac2.mit.edu/isbi_challenge" in url for url in isbi.urls)
    default = Config().download
    assert {k: getattr(default, k) for k in ISBI_DOWNLOAD} == {
        "urls": (),
        "slice_mirrors": (),
        "images": ("images.tif",),
        "labels": "labels.tif",
        "pixel_sha256": {},  # accept any stack
    }
    text = json.dumps(config.to_dict(Config()))
    assert "://" not in text and not [name for name in isbi.files if name in text]
    mirrors = [url for m in isbi.slice_mirrors for url in m.files.values()]
    catalogue = [*isbi.urls, *mirrors, *isbi.pixel_sha256.values()]
    for path in [*(ROOT / "unet").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:  # nor any other code
        assert not [entry for entry in catalogue if entry in path.read_text()], path


def test_params_are_read_as_dvc_reads_them():
    """YAML 1.2 like DVC: 1e-4 is a float (YAML 1.1 loaders read a string)."""
    cfg = config.loads("train:\n  learning_rate: 1e-4\n  weight_decay: 1e-5\n")
    assert (cfg.train.learning_rate, cfg.train.weight_decay) == (1e-4, 1e-5)


def _dotted(data, prefix=""):
    for k, v in data.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _dotted(v, prefix + k + ".")


def _yaml(path: Path) -> dict:
    return YAML(typ="safe", pure=True).load(path.read_text())


def test_every_dvc_param_exists_and_the_fold_matrix_comes_from_params():
    dvc, params = _yaml(ROOT / "dvc.yaml"), _yaml(ROOT / "params.yaml")
    known = set(_dotted(params))
    for name, stage in dvc["stages"].items():
        for key in stage.get("params", []):
            assert key in known, f"{name}: params key {key} not in params.yaml"
    assert dvc["stages"]["train"]["matrix"]["fold"] == "${split.folds}"
    text = (ROOT / "dvc.yaml").read_text()
    for k in range(1, 5):  # no hand-kept fold list anywhere
        assert f"fold{k}" not in text


def import_closure(module: str) -> set[str]:
    """Files of ``unet`` that running ``python -m module`` executes: its transitive ``unet`` imports."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = ROOT / Path(*name.split(".")).with_suffix(".py")
        if not path.is_file():
            path = ROOT / Path(*name.split(".")) / "__init__.py"
        rel = str(path.relative_to(ROOT))
        if not path.is_file() or rel in seen:
            continue
        seen.add(rel)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "unet":
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "unet"]
    return seen


def test_every_stage_depends_on_the_code_it_runs():
    dvc = _yaml(ROOT / "dvc.yaml")
    for name, stage in dvc["stages"].items():
        code = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("unet/")}
        assert code == import_closure(f"unet.stages.{name}"), name


def test_only_metrics_and_plots_are_uncached_so_the_run_cache_keeps_every_stage():
    """DVC saves a stage to its run-cache only when each of its `cache: false` outputs is a metric or a plot
    (`Stage.run` in dvc/stage/__init__.py); without it, a rerun after another experiment retrains."""
    dvc = _yaml(ROOT / "dvc.yaml")
    for name, stage in dvc["stages"].items():
        for out in stage.get("outs", []):
            path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            assert opts.get("cache", True), f"{name}: {path} is a `cache: false` out, not a metric or plot"
        assert not any("persist" in str(o) for o in stage.get("outs", [])), name  # also not run-cached


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train": {"bogus": 1}}, r"train\.bogus: unknown key"),
        ({"nope": {}}, r"nope: unknown key"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: invalid value 0"),
        ({"train": {"batch_size": "8"}}, r"train\.batch_size: invalid value '8'"),
        ({"train": {"model": {"tile": 570}}}, r"train\.model\.tile: invalid value 570.*556 or 572"),
        ({"runtime": {"precision": "fp8"}}, r"runtime\.precision: invalid value 'fp8'"),
        ({"split": {"folds": [0]}}, r"split\.folds: invalid value \[0\]"),
        ({"split": {"folds": [1, 2]}}, r"split\.folds: invalid value \[1, 2\]: must be \[0, 1, \.\.\., k-1\]"),
        ({"split": {"k": 3}}, r"split\.k: unknown key"),
        ({"download": {"urls": ["ftp://x"]}}, r"download\.urls: invalid value 'ftp://x'"),
        ({"train": {"checkpoint_every": 150}}, r"train\.checkpoint_every: invalid value 150"),
        ({"runtime": {"hosts": "gpu1:4"}}, r"runtime\.hosts: invalid value 'gpu1:4': expected a list"),
        ({"runtime": {"hosts": ["gpu1"], "gpus": 1}}, r"runtime\.hosts: invalid value 'gpu1': .*'hostname:slots'"),
        ({"runtime": {"hosts": ["gpu1:0"], "gpus": 0}}, r"runtime\.hosts: invalid value 'gpu1:0'"),
        ({"runtime": {"hosts": ["a:2", "a:2"], "gpus": 4}}, r"runtime\.hosts: .*listed twice"),
        ({"runtime": {"hosts": ["a:4", "b:4"]}}, r"runtime\.gpus: invalid value 1: must equal .* \(8\)"),
        ({"runtime": {"hosts": ["a:1", "b:1"], "gpus": 2, "parallel": "fold"}}, r"runtime\.hosts: .*parallel: data"),
        ({"runtime": {"network_interface": "eth0 eth1"}}, r"runtime\.network_interface: invalid value"),
        ({"runtime": {"start_timeout": 0}}, r"runtime\.start_timeout: invalid value 0"),
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


def test_hosts_and_interface_round_trip_through_params_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    apply(p, {"runtime.hosts": ["gpu1:4", "10.0.0.2:4"], "runtime.gpus": 8, "runtime.network_interface": "eth0"})
    runtime = config.load(p).runtime
    assert (runtime.hosts, runtime.gpus, runtime.network_interface) == (("gpu1:4", "10.0.0.2:4"), 8, "eth0")
