"""The ``unet`` console script. ``unet release EXP`` releases a DVC experiment (see :mod:`unet.release`).
``unet predict IN OUT.tif`` turns a grey stack (multi-page TIFF, folder of slices or OME-Zarr image) of any size
into float32 foreground probabilities (1 = cell interior, the polarity of ``train-labels.tif``) or binary masks,
written as a TIFF or (``OUT.ome.zarr``) an OME-Zarr image, or added as labels to an OME-Zarr input, by
overlap-tile inference with one model or an ensemble, optionally with test-time augmentation, streamed
page by page, with Keras or (``--engine onnx``) ONNX Runtime, which starts no Keras backend (see
:mod:`unet.predict`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def predict(args: argparse.Namespace) -> None:
    import logging

    if args.models is None:
        args.models = [f"models/registered/model.{args.engine}"]
    models: dict[str, str | Path] = {f"--models {m}": m for m in args.models}
    # before the backend starts: an output that would replace the input, a model or a directory is refused
    if args.labels_into_input:
        _labels_into_input(args, models)
    else:
        _output(args, models)
    from unet.io import stack_info
    from unet.stages._cli import start_backend

    stack_info(args.input)  # a bad input fails here, before the backend starts
    if args.engine == "keras":  # ONNX Runtime needs no Keras backend: none is imported
        start_backend()
    from unet.predict import predict_file

    logging.basicConfig(level=logging.INFO, format="unet predict: %(message)s", stream=sys.stderr)
    done = predict_file(
        args.input,
        args.output,
        args.models,
        batch_size=args.batch_size,
        tta=args.tta,
        threshold=args.threshold,
        log_every=args.log_every,
        engine=args.engine,
        threads=args.threads,
        label_name=args.label_name if args.labels_into_input else None,
    )
    kind = f"uint8 masks (threshold {args.threshold})" if args.threshold is not None else "float32 probabilities"
    where = f"{args.input}/labels/{args.label_name}" if args.labels_into_input else args.output
    print(
        f"unet predict: wrote {where}: {done['slices']}x{done['height']}x{done['width']} {kind}"
        f"{' (BigTIFF)' if done['bigtiff'] else ''} in {done['seconds']:.1f} s ({done['img_per_s']:.3g} img/s)",
        file=sys.stderr,
    )


def _output(args: argparse.Namespace, models: dict[str, str | Path]) -> None:
    """Refuse a missing or badly named OUT, an existing directory that unet predict did not write, or an OUT
    over an input."""
    from unet.io import DataError, check_outputs
    from unet.predict import check_output

    if args.output is None:
        raise DataError(f"{args.input}: no OUT given; name the output (OUT.tif, OUT.ome.zarr) or --labels-into-input")
    check_output(args.output)
    check_outputs({"OUT": args.output}, {"IN": args.input, **models})


def _labels_into_input(args: argparse.Namespace, models: dict[str, str | Path]) -> None:
    """Refuse --labels-into-input with OUT, without --threshold, on an input that is not OME-Zarr, or with a
    label name the input already has."""
    from unet import omezarr
    from unet.io import DataError, check_outputs, is_zarr

    if args.output is not None:
        raise DataError(f"{args.output}: --labels-into-input writes into IN; give no OUT")
    if args.threshold is None:
        raise DataError(f"{args.input}: --labels-into-input needs --threshold (labels are masks)")
    if not is_zarr(args.input):
        raise DataError(f"{args.input}: --labels-into-input needs an OME-Zarr input (.zarr / .ome.zarr)")
    if not args.label_name or "/" in args.label_name or args.label_name.startswith("."):
        raise DataError(f"--label-name: invalid value {args.label_name!r}: a plain name such as unet")
    check_outputs({"IN": args.input}, models)
    omezarr.check_new_label(args.input, args.label_name, args.input)


def release(args: argparse.Namespace) -> None:
    import logging

    from unet import config
    from unet.ops.dvcfiles import stage_option
    from unet.ops.runner import run
    from unet.release import experiment_commit, release

    logging.basicConfig(level=logging.INFO, format="unet release: %(message)s", stream=sys.stderr)
    repo = Path(args.repo)
    # the experiment's own params name the artifact and its stage
    sha = experiment_commit(repo, args.experiment)
    shown = run(["git", "show", f"{sha}:params.yaml"], repo, check=False)
    if shown.returncode != 0:
        raise ValueError(f"experiment {args.experiment}: no params.yaml in its commit {sha[:7]}")
    cfg = config.loads(shown.stdout, f"{args.experiment}:params.yaml").register
    card = args.card or stage_option(repo, "register", "--card", rev=sha)  # where that commit's stage wrote it
    out = release(repo, args.experiment, cfg.name, args.stage or cfg.stage, card)
    print(json.dumps(out))


def parser() -> argparse.ArgumentParser:
    """``unet predict`` and ``unet release``, every option described."""
    p = argparse.ArgumentParser(
        prog="unet",
        description="Segment grey stacks with a trained U-Net (unet predict) and release DVC experiments "
        "as versioned models (unet release). unet COMMAND --help describes each.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="segment a grey stack, page by page")
    pr.add_argument(
        "input",
        help="grey-value TIFF stack (N, H, W), single PNG/TIFF, folder of slice images, or OME-Zarr image "
        "(NGFF 0.4/0.5, level 0, one z-slice a chunk)",
    )
    pr.add_argument(
        "output",
        nargs="?",
        help="OUT.tif: float32 probabilities, or uint8 masks (0/255) with --threshold; OUT.zarr / OUT.ome.zarr: "
        "an OME-Zarr image with the input's axes and scale (masks as an NGFF labels image, 0/1)",
    )
    pr.add_argument(
        "--models",
        nargs="+",
        help="one or more .keras (or with --engine onnx, .onnx) models; several are averaged "
        "(default: models/registered/model.keras, or model.onnx)",
    )
    pr.add_argument(
        "--engine",
        choices=("keras", "onnx"),
        default="keras",
        help="run the models with Keras or with ONNX Runtime, which imports no TensorFlow/JAX (default: %(default)s)",
    )
    pr.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime's threads per model call, 0: one per core (default: 0)"
    )
    pr.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    pr.add_argument("--threshold", type=float, help="write binary masks (0/255; OME-Zarr: 0/1) at this probability")
    pr.add_argument(
        "--labels-into-input",
        action="store_true",
        help="with --threshold and an OME-Zarr input (and no OUT): add the masks to the input as the NGFF labels "
        "image labels/NAME (see --label-name); the input's image arrays and metadata are not touched, and an "
        "existing label of that name is refused",
    )
    pr.add_argument("--label-name", default="unet", help="name of the labels image (default: %(default)s)")
    pr.add_argument("--batch-size", type=int, default=8, help="tiles per model call (default: %(default)s)")
    pr.add_argument(
        "--log-every",
        type=float,
        default=30.0,
        help="seconds between progress lines when stderr is not a terminal (default: %(default)s)",
    )
    rel = sub.add_parser("release", help="release a DVC experiment: branch, dvc push, GTO version and stage tags")
    rel.add_argument("experiment", help="experiment name, as `dvc exp show` lists it")
    rel.add_argument("--stage", help="GTO stage to assign (default: the experiment's register.stage)")
    rel.add_argument("--repo", default=".", help="the git and DVC repository (default: the current directory)")
    rel.add_argument("--card", help="the model card (default: the register stage's --card in dvc.yaml)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "predict" and args.threshold is not None and not 0 < args.threshold < 1:
        p.error(f"--threshold: invalid value {args.threshold}: must be in (0, 1)")
    if args.command == "predict" and args.batch_size < 1:
        p.error(f"--batch-size: invalid value {args.batch_size}: must be at least 1")
    if args.command == "predict" and args.threads < 0:
        p.error(f"--threads: invalid value {args.threads}: must be at least 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        (predict if args.command == "predict" else release)(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"unet {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
