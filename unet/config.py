"""Typed configuration: one frozen dataclass per ``params.yaml`` section, loaded once at an entry point.

Unknown keys and invalid values raise ``ValueError`` naming the key (as a dotted path) and the value
received (``unet.schema`` reads the plain data). Library code never reads ``params.yaml`` itself; it receives
these objects. The defaults name no data set: ``params.yaml`` holds ISBI 2012's sources, hashes and ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from unet.geometry import check_tile
from unet.schema import check, check_choices, from_dict, read_yaml
from unet.schema import fingerprint as fingerprint  # re-exported: callers take the whole API from here
from unet.schema import to_dict as to_dict

Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]  # runtime.precision (also the flow's parameter)


@dataclass(frozen=True)
class SliceMirrorConfig:
    """A mirror storing each stack as one file per slice: ``files`` maps a stack's name (as in
    ``download.images``/``labels``) to the URL of its slice ``i``, a ``str.format`` template with the field
    ``{i}`` (``.../image/{i}.png``, ``.../s{i:03d}.tif``), for ``i`` in ``0 .. slices-1``."""

    slices: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.slices >= 1, "download.slice_mirrors.slices", self.slices, "must be >= 1")
        check(bool(self.files), "download.slice_mirrors.files", self.files, "must name at least one stack")
        for name, url in self.files.items():
            key = f"download.slice_mirrors.files.{name}"
            check(url.startswith(("http://", "https://")), key, url, "must be http(s)")
            check("{i" in url, key, url, "must hold the slice index field {i} (e.g. .../{i}.png)")


@dataclass(frozen=True)
class DownloadConfig:
    """Where the stacks come from, how each is verified, and how long the network may take. The defaults name
    no data set: ``images.tif`` and ``labels.tif`` from ``local_dir``, no URL, no mirror, no checksum."""

    local_dir: str | None = None  # also taken from $ISBI_DATA_DIR, which wins when set
    urls: tuple[str, ...] = ()  # whole-stack sources tried in order after local_dir; the file name is appended
    slice_mirrors: tuple[SliceMirrorConfig, ...] = ()  # after urls
    images: tuple[str, ...] = ("images.tif",)  # the first is the labelled training stack
    labels: str = "labels.tif"
    # sha256 of the decoded C-order pixel array; an empty mapping accepts any valid stack.
    pixel_sha256: dict[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 10.0  # name lookup + TCP connect
    timeout_s: float = 30.0  # longest wait for the next bytes of an open transfer
    retries: int = 3  # attempts per URL
    backoff_s: float = 1.0  # first wait between attempts; doubles each time
    budget_s: float = 90.0  # seconds all failed attempts and waits together may take; then the stage stops

    def __post_init__(self) -> None:
        for key in ("connect_timeout_s", "timeout_s", "budget_s"):
            check(getattr(self, key) > 0, f"download.{key}", getattr(self, key), "must be > 0")
        check(self.retries >= 1, "download.retries", self.retries, "must be >= 1")
        check(self.backoff_s >= 0, "download.backoff_s", self.backoff_s, "must be >= 0")
        for url in self.urls:
            check(url.startswith(("http://", "https://")), "download.urls", url, "must be http(s)")
        check(bool(self.images), "download.images", list(self.images), "must name at least one stack")
        for name in self.files:
            key = "download.labels" if name == self.labels else "download.images"
            ok = name.lower().endswith((".tif", ".tiff")) and "/" not in name
            check(ok, key, name, "must be a file name ending in .tif or .tiff (data/raw holds multi-page TIFFs)")
        check(len(set(self.files)) == len(self.files), "download.labels", self.labels, "is also in download.images")
        named = {f"download.pixel_sha256.{name}": name for name in self.pixel_sha256}
        named |= {f"download.slice_mirrors.files.{name}": name for m in self.slice_mirrors for name in m.files}
        for key, name in named.items():
            check(name in self.files, key, name, f"not a stack of download: {', '.join(self.files)}")

    @property
    def files(self) -> tuple[str, ...]:
        return (self.images[0], self.labels, *self.images[1:])


@dataclass(frozen=True)
class ValidateConfig:
    """Per-slice bounds of the Great Expectations suite. The defaults fit any binary segmentation (sparse or
    empty masks pass, any grey-value scale); params.yaml sets ISBI 2012's stricter ranges."""

    min_foreground: float = 0.0  # fraction of a label slice that is foreground (the larger label value)
    max_foreground: float = 1.0
    min_relative_std: float = 0.01  # grey std / the stack's 1st-99th percentile range; below = blank slice

    def __post_init__(self) -> None:
        low, high = self.min_foreground, self.max_foreground
        why = "need 0 <= min_foreground <= max_foreground <= 1"
        check(0 <= low <= high <= 1, "validate.min_foreground", (low, high), why)
        check(self.min_relative_std >= 0, "validate.min_relative_std", self.min_relative_std, "must be >= 0")


@dataclass(frozen=True)
class SplitConfig:
    """Seeded k-fold partition of the labelled slices. ``folds`` lists the fold ids ``0..k-1``: it is the
    list ``dvc.yaml``'s train matrix iterates over, so ``k`` is its length and set nowhere else."""

    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    seed: int = 42
    min_slices_per_fold: int = 2  # validation slices each fold needs at least: k folds need k x this

    def __post_init__(self) -> None:
        check(len(self.folds) >= 2, "split.folds", list(self.folds), "need at least 2 folds")
        ids = list(range(len(self.folds)))
        check(list(self.folds) == ids, "split.folds", list(self.folds), f"must be [0, 1, ..., k-1], e.g. {ids}")
        check(self.min_slices_per_fold >= 1, "split.min_slices_per_fold", self.min_slices_per_fold, "must be >= 1")

    @property
    def k(self) -> int:
        return len(self.folds)


@dataclass(frozen=True)
class AugmentConfig:
    """On-device joint image/label augmentation (see ``unet.augment``)."""

    flip_rotate: bool = True  # the 8 dihedral transforms
    elastic_sigma: float = 10.0  # px std of the coarse displacement grid (paper: 10)
    elastic_grid: int = 3  # coarse grid points per axis (paper: 3x3)
    brightness: float = 0.1  # max additive shift, image scaled to [0, 1]
    contrast: float = 0.2  # max relative contrast change

    def __post_init__(self) -> None:
        check(self.elastic_sigma >= 0, "train.augment.elastic_sigma", self.elastic_sigma, "must be >= 0")
        check(self.elastic_grid >= 2, "train.augment.elastic_grid", self.elastic_grid, "must be >= 2")
        check(0 <= self.brightness <= 1, "train.augment.brightness", self.brightness, "must be in [0, 1]")
        check(0 <= self.contrast < 1, "train.augment.contrast", self.contrast, "must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net's shape: the paper's at ``base_filters=64, depth=5, up='upconv2x2'``."""

    base_filters: int = 64
    depth: int = 5
    dropout: float = 0.5  # at the end of the contracting path (the deepest block), as in the paper
    up: Literal["upconv2x2", "transpose3x3"] = "upconv2x2"
    tile: int = 572  # input tile side; output side is tile - margin

    def __post_init__(self) -> None:
        check(self.base_filters >= 1, "train.model.base_filters", self.base_filters, "must be >= 1")
        check(2 <= self.depth <= 7, "train.model.depth", self.depth, "must be in [2, 7]")
        check(0 <= self.dropout < 1, "train.model.dropout", self.dropout, "must be in [0, 1)")
        check_choices(self, "train.model")
        check_tile(self.tile, self.depth, name="train.model.tile")


@dataclass(frozen=True)
class LossConfig:
    """Softmax cross-entropy + soft Dice, optionally with the paper's border weight map."""

    dice_weight: float = 1.0
    border_weight: bool = False
    w0: float = 10.0
    sigma: float = 5.0  # px

    def __post_init__(self) -> None:
        check(self.dice_weight >= 0, "train.loss.dice_weight", self.dice_weight, "must be >= 0")
        check(self.sigma > 0, "train.loss.sigma", self.sigma, "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one fold's training run (the paper's GPU recipe by default)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 8
    max_steps: int = 6400
    learning_rate: float = 1e-4
    warmup_steps: int = 200
    schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    steps_per_epoch: int = 100  # progress bar, metrics and checkpoint granularity
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "steps_per_epoch", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "must be >= 1")
        check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "must be > 0")
        check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        check_choices(self, "train")
        check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        every, why = self.checkpoint_every, f"must be a multiple of train.steps_per_epoch={self.steps_per_epoch}"
        check(every % self.steps_per_epoch == 0, "train.checkpoint_every", every, why)


@dataclass(frozen=True)
class EvaluateConfig:
    """Overlap-tile inference and metrics on each fold's validation slices."""

    batch_size: int = 8
    tta: bool = False
    threshold: float = 0.5
    overlays: int = 2  # overlay PNGs per fold

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "must be >= 1")
        check(0 < self.threshold < 1, "evaluate.threshold", self.threshold, "must be in (0, 1)")
        check(self.overlays >= 0, "evaluate.overlays", self.overlays, "must be >= 0")


@dataclass(frozen=True)
class RegisterConfig:
    """Which model is published, under which name and stage."""

    name: str = "unet-isbi2012"
    select: Literal["best", "ensemble"] = "best"
    metric: str = "soft_dice"
    stage: str = "dev"
    dataset: str = "an unnamed data set"  # what the model was trained on, for its card and release
    foreground: str = "foreground"  # what label 1 (white) means in that data, e.g. cell interior
    authors: tuple[str, ...] = ("the model's trainers",)  # of the bioimage.io package
    license: str = "CC-BY-4.0"  # SPDX id of the bioimage.io package's licence

    def __post_init__(self) -> None:
        check_choices(self, "register")
        ok = bool(self.name) and self.name.replace("-", "").isalnum()
        check(ok, "register.name", self.name, "must be letters, digits and '-'")
        for key in ("dataset", "foreground"):
            check(bool(getattr(self, key).strip()), f"register.{key}", getattr(self, key), "must not be empty")
        ok = bool(self.authors) and all(a.strip() for a in self.authors)
        check(ok, "register.authors", self.authors, "must name at least one author, none empty")


@dataclass(frozen=True)
class RuntimeConfig:
    """How training runs (not what it learns): precision, XLA, devices, parallelism, hosts."""

    precision: Precision = "mixed_bfloat16"
    xla: bool = True
    tf32: bool = True
    gpus: int = 1  # Horovod processes (one per GPU) in all: on this host, or the slots of `hosts` added up
    parallel: Literal["data", "fold"] = "data"
    # one fold over several hosts (Horovod, TensorFlow): "name:slots" each, as horovodrun -H takes them
    hosts: tuple[str, ...] = ()
    network_interface: str | None = None  # e.g. eth0 (horovodrun --network-interfaces); None: Horovod finds one
    start_timeout: int = 30  # s for horovodrun to reach every host and start every process

    def __post_init__(self) -> None:
        check_choices(self, "runtime")
        check(self.gpus >= 0, "runtime.gpus", self.gpus, "must be >= 0")
        check(self.start_timeout >= 1, "runtime.start_timeout", self.start_timeout, "must be >= 1 (seconds)")
        nic = self.network_interface
        ok = nic is None or _NAME.fullmatch(nic) is not None
        check(ok, "runtime.network_interface", nic, "must be one interface name, e.g. eth0")
        if not self.hosts:
            return
        for host in self.hosts:
            name, _, slots = host.rpartition(":")
            ok = _NAME.fullmatch(name) is not None and slots.isdigit() and int(slots) >= 1
            check(ok, "runtime.hosts", host, "each entry must be 'hostname:slots', e.g. 'gpu1:4'")
        names = [h.rpartition(":")[0] for h in self.hosts]
        check(len(set(names)) == len(names), "runtime.hosts", list(self.hosts), "a host is listed twice")
        check(self.parallel == "data", "runtime.hosts", list(self.hosts), "needs runtime.parallel: data")
        total = sum(int(h.rpartition(":")[2]) for h in self.hosts)
        check(self.gpus == total, "runtime.gpus", self.gpus, f"must equal the slots of runtime.hosts ({total})")


# Runtime params that say where a run's processes are placed, not what they compute: a checkpoint written
# under one placement resumes under another with the same process count.
PLACEMENT = ("parallel", "hosts", "network_interface", "start_timeout")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Config:
    """The whole ``params.yaml``."""

    download: DownloadConfig = field(default_factory=DownloadConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def loads(text: str, where: str = "params.yaml") -> Config:
    """Parse and validate params text as DVC does (YAML 1.2, ruamel): ``1e-4`` is a float, ``on`` a string."""
    return from_dict(Config, read_yaml(text, where))


def load(path: str | Path = "params.yaml") -> Config:
    """Load and validate ``params.yaml``; a missing section takes its defaults."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read params: {exc}") from exc
    return loads(text, str(path))
