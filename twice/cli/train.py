"""``twice train``: train the embedding network, resume it, export or evaluate a checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from twice.model.train import VAL_TRANSFORMS, VIEWS, TrainConfig, build_trainer, evaluate, prepare_data
from twice.model.training_data import SOURCES, Sources

from .commands import help_for

LOG = logging.getLogger(__name__)

EPILOG = """examples:
  twice train                                  # defaults: vgg16_bn, 96 px, InfoNCE, built-in data
  twice train --data ~/photos --epochs 20      # add your own folders to the built-in sources
  twice train --resume                         # continue the run in <data_dir>/models/train/
  twice --checkpoint index_data/models/train/model.pt train --evaluate
                                               # recall@1 per transform on the held-out split
Ctrl-C (or SIGTERM, to the process or its whole group) saves the state after the current step;
--resume continues exactly."""


def register(subparsers) -> None:
    defaults = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help=help_for("train"),
        description="Train the VGG-16 embedding network: each image against an augmented view of"
        " itself, the rest of the batch as negatives. Checkpoints every epoch and on Ctrl-C.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(p)
    p.add_argument(
        "--include-bench-images",
        action="store_true",
        help="also train on the images `twice bench quality` uses by default (left out otherwise)",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="default %(default)s")
    p.add_argument(
        "--steps-per-epoch", type=int, default=0, help="cap the steps of an epoch (default: a full pass)"
    )
    p.add_argument("--batch", type=int, default=defaults.batch, help="pairs per step (default %(default)s)")
    p.add_argument("--size", type=int, default=defaults.size, help="input side in px (default %(default)s)")
    p.add_argument(
        "--lr", type=float, default=defaults.lr, help="peak AdamW learning rate (default %(default)s)"
    )
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="default %(default)s")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="warm-up steps (default %(default)s)")
    p.add_argument(
        "--loss", choices=["infonce", "triplet-batch-hard", "triplet-semi-hard"], default=defaults.loss
    )
    p.add_argument(
        "--temperature", type=float, default=defaults.temperature, help="InfoNCE τ (default %(default)s)"
    )
    p.add_argument(
        "--margin", type=float, default=defaults.margin, help="triplet margin (default %(default)s)"
    )
    p.add_argument("--arch", choices=["vgg16_bn", "vgg16"], default=defaults.arch)
    p.add_argument("--dim", type=int, default=defaults.dim, help="embedding size (default %(default)s)")
    p.add_argument(
        "--invariance",
        choices=["d4", "none"],
        default=defaults.invariance,
        help="d4: the model pools over the 8 quarter turns/flips, positives skip them;"
        " none: one view, positives include them (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="data, held-out split, init and views (default 0)"
    )
    p.add_argument(
        "--view-seed",
        type=int,
        help="seed of the augmented views and batch order only (default: --seed): a fine-tuning"
        " stage (--init) with a new one sees new views of the same images and held-out split",
    )
    p.add_argument(
        "--step",
        action="append",
        default=[],
        metavar="NAME:P[:LOW:HIGH]",
        help="with --views steps: change one step of the positives' augmentation, e.g."
        " bright:0.6:60:110 (draw +60..110 brightness in 60%% of views); repeatable",
    )
    p.add_argument(
        "--views",
        choices=VIEWS,
        default=defaults.views,
        help="families: positives drawn from augment's edit families with ranged parameters, 30%% of"
        " them 2-3 families at once; steps: the older per-transform pipeline that --step changes"
        " (default %(default)s)",
    )
    p.add_argument(
        "--hold-out",
        default=",".join(defaults.hold_out),
        metavar="FAMILIES",
        help="edit families training never draws, so the bench measures edits the model never saw;"
        " comma-separated, or 'none' (default %(default)s)",
    )
    p.add_argument(
        "--combo-p",
        type=float,
        default=defaults.combo_p,
        help="share of views combining 2-3 families (default %(default)s)",
    )
    p.add_argument(
        "--sibling-pairs",
        type=int,
        default=defaults.sibling_pairs,
        metavar="N",
        help="slots of each batch given to a drawing filed in the same folder as another image of"
        " the batch (cards of one deck, icons of one theme): hard negatives (default %(default)s)",
    )
    p.add_argument(
        "--holdout",
        type=int,
        default=defaults.holdout,
        help="held-out validation images (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="augmentation worker processes (default %(default)s)",
    )
    p.add_argument("--out", type=Path, help="run folder (default <data_dir>/models/train)")
    p.add_argument(
        "--init",
        type=Path,
        metavar="CHECKPOINT",
        help="start from a twice checkpoint (fine-tune) instead of random",
    )
    p.add_argument("--resume", action="store_true", help="continue the run saved in the run folder")
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        metavar="EPOCH",
        help="stop (saved, resumable) once epoch EPOCH of the schedule is done: split a long run"
        " across sessions; --resume continues it (default: run to the end)",
    )
    p.add_argument("--export", type=Path, metavar="PATH", help="also copy the final fp16 checkpoint here")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="do not train: report held-out recall@1 per transform of the current model (--checkpoint)",
    )
    p.add_argument("--json", action="store_true", help="with --evaluate: print JSON")
    # Named train_device so the subcommand does not clobber the global --device.
    p.add_argument(
        "--device", dest="train_device", choices=["auto", "cpu", "cuda"], help="default: global --device"
    )
    p.set_defaults(func=run_train)


def add_source_arguments(p) -> None:
    """The training-image flags that `twice train` and `twice whiten` share."""
    p.add_argument("--data", nargs="+", type=Path, default=[], metavar="DIR", help="extra image folders")
    p.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help=f"built-in sources, comma-separated, or 'none' (default: {','.join(SOURCES)})",
    )
    p.add_argument(
        "--synthetic",
        type=int,
        default=Sources.synthetic_count,
        help="generated images (default %(default)s)",
    )
    p.add_argument(
        "--max-per-source",
        type=int,
        default=Sources.max_per_source,
        help="cap per source (default %(default)s)",
    )


def sources_from_args(args: argparse.Namespace, exclude_bench: bool = True) -> Sources:
    """What ``add_source_arguments``' flags (and ``--seed``) ask for."""
    names = list(comma_names(args.sources))
    return Sources(names, list(args.data), args.synthetic, args.max_per_source, args.seed, exclude_bench)


def config_from_args(args: argparse.Namespace, options) -> TrainConfig:
    sources = sources_from_args(args, exclude_bench=not args.include_bench_images)
    if not sources.names and not sources.folders:
        raise ValueError("no training data: give --data DIR or keep a built-in --sources")
    return TrainConfig(
        out_dir=args.out or options.models_dir / "train",
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch=args.batch,
        size=args.size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        loss=args.loss,
        temperature=args.temperature,
        margin=args.margin,
        arch=args.arch,
        dim=args.dim,
        invariance=args.invariance,
        seed=args.seed,
        view_seed=args.view_seed,
        holdout=args.holdout,
        device=args.train_device or options.device,
        workers=args.workers,
        init=str(args.init or ""),
        views=args.views,
        hold_out=comma_names(args.hold_out),
        combo_p=args.combo_p,
        sibling_pairs=args.sibling_pairs,
        step_overrides=tuple(args.step),
        sources=sources,
    )


def run_train(args: argparse.Namespace, options) -> int:
    config = config_from_args(args, options)
    progress = not args.quiet
    if args.evaluate:
        return run_evaluate(config, options, args.json, progress)
    trainer = build_trainer(config, resume=args.resume, progress=progress)
    config = trainer.config  # on --resume, the saved run's config
    print(
        f"training {config.arch} at {config.size} px on {trainer.device}: "
        f"{trainer.data_summary['train']} images, {trainer.steps_per_epoch} steps x {config.epochs} epochs,"
        f" batch {config.batch}, loss {config.loss}; run folder {config.out_dir}"
    )
    if args.stop_after < 0:
        raise ValueError(f"--stop-after must be an epoch >= 1 (or 0 for no stop), not {args.stop_after}")
    outcome = trainer.run(progress=progress, stop_after=args.stop_after)
    resume = f"twice --data-dir {options.data_dir} train --resume" + _out_hint(args)
    if outcome == "interrupted":
        print(f"interrupted at step {trainer.step}: state saved to {trainer.state_path}")
        print(f"continue with: {resume}")
        return 130
    path = trainer.export()
    if outcome == "paused":
        print(f"stopped after epoch {args.stop_after} (step {trainer.step} of {trainer.total_steps});")
        print(f"checkpoint {path}; continue with: {resume}")
    else:
        print(f"finished {trainer.step} steps; checkpoint {path} (load it with --checkpoint {path})")
    if args.export:
        print(f"exported {trainer.export(args.export)}")
    if trainer.history["epochs"]:
        print(format_recall(trainer.history["epochs"][-1]["recall"]))
    return 0


def _out_hint(args: argparse.Namespace) -> str:
    return f" --out {args.out}" if args.out else ""


def run_evaluate(config: TrainConfig, options, as_json: bool, progress: bool) -> int:
    from twice.model.embedder import Embedder

    _, holdout, summary = prepare_data(config, progress)
    embedder = Embedder.from_options(options)
    recall = evaluate(embedder, holdout)
    if as_json:
        print(
            json.dumps({"model": embedder.version, "holdout": summary["holdout"], "recall": recall}, indent=1)
        )
    else:
        print(f"model {embedder.version}, {summary['holdout']} held-out images")
        print(format_recall(recall))
    return 0


def format_recall(recall: dict[str, float]) -> str:
    """A two-column table: transform, recall@1 (and the collapse indicator last)."""
    rows = [f"  {name:<12} {recall[name]:.3f}" for name in VAL_TRANSFORMS if name in recall]
    if "neg_cos" in recall:
        rows.append(f"  {'(neg cos)':<12} {recall['neg_cos']:.3f}")
    return "recall@1 per transform:\n" + "\n".join(rows)


def comma_names(text: str) -> tuple[str, ...]:
    """``tilt,crop`` as a tuple of names; ``none`` (or nothing) is none."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())
