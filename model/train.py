"""Train the embedding network: (image, augmented view) pairs, in-batch negatives, AdamW.

A run lives in one folder (``<data_dir>/models/train/`` by default):

- ``last.pt``: the full training state (model, optimizer, scheduler, step, history, RNG
  states, config), written every epoch and when SIGINT/SIGTERM stops the run; ``--resume``
  continues from it exactly (the data order and every view are functions of the seed, the
  epoch and the image index, so nothing about the data needs saving);
- ``model.pt``: the fp16 trunk + head checkpoint that ``--checkpoint`` and the embedder load;
- ``history.json`` and ``curve.png``: loss per step, validation recall@1 per transform per epoch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from twice.augment import HELD_OUT_FAMILIES, FamilyAugment, RandomAugment, apply_transform, with_overrides
from twice.indexer.batches import die_with_parent

from .embedder import Embedder, cpu_has_fast_bf16, pick_device
from .losses import LOSSES, make_loss
from .network import ARCHS, check_invariance
from .training_data import (
    STEPS_FOR_INVARIANCE,
    PairDataset,
    Sources,
    epoch_order,
    folder_siblings,
    gather_paths,
    load_images,
    split_holdout,
)
from .weights import WeightsInfo, load_checkpoint, save_checkpoint, seeded_network

LOG = logging.getLogger(__name__)

STATE_FORMAT = "twice-train-state"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # save and stop; only the main process handles them
VIEWS = ("families", "steps")
D4_EXACT = ("rotate", "mirror")  # families a d4-pooled model matches exactly, whatever it learns
# Validation queries: the original system's four, the other quarter turns and flips, and the
# bench's harder edits. Each held-out original is the gallery; each transformed copy a query.
VAL_TRANSFORMS = (
    "rotate",
    "rotate:180",
    "rotate:270",
    "mirror",
    "flip",
    "bright",
    "dark",
    "crop:0.8",
    "tilt:10",
    "tilt:12:black",
    "pad:1.78",
    "cropbox:0.4:1:0.2:0.8",
    "caption",
    "jpeg:20",
    "scale:0.5",
    "gray",
    "blur",
)


@dataclass
class TrainConfig:
    """Everything that decides what a run computes (``out_dir``/``device``/``workers`` do not)."""

    out_dir: Path = Path("index_data/models/train")
    epochs: int = 10
    steps_per_epoch: int = 0  # 0: one pass over the training images per epoch
    batch: int = 32
    size: int = 96
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 50  # steps of linear warm-up before the cosine decay
    loss: str = "infonce"
    temperature: float = 0.1
    margin: float = 0.2
    arch: str = "vgg16_bn"
    dim: int = 256
    invariance: str = "d4"  # d4: positives without turns/flips (the pooling handles them)
    seed: int = 0
    view_seed: int | None = None  # augmented views and batch order; None: ``seed``
    holdout: int = 120
    device: str = "auto"
    workers: int = 0
    init: str = ""  # start from these weights (a twice checkpoint) instead of a seeded random init
    views: str = "families"  # families: edit families drawn from ranges; steps: the older Step pipeline
    hold_out: tuple[str, ...] = (
        HELD_OUT_FAMILIES  # edit families training never sees (the bench measures them)
    )
    combo_p: float = 0.3  # share of views that combine 2-3 families
    sibling_pairs: int = 0  # batch slots given to a folder-mate of another image (hard negatives)
    step_overrides: tuple[str, ...] = ()  # NAME:P[:LOW:HIGH] changes to the steps pipeline
    sources: Sources = field(default_factory=Sources)

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch": self.batch >= 2,
            "size": self.size >= 32,
            "lr": self.lr > 0,
            "warmup": self.warmup >= 0,
            "steps_per_epoch": self.steps_per_epoch >= 0,
            "holdout": self.holdout >= 0,
            "workers": self.workers >= 0,
            "sibling_pairs": 0 <= self.sibling_pairs <= self.batch // 2,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"train: bad {name} {getattr(self, name)!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        check_invariance(self.invariance)
        if self.views not in VIEWS:
            raise ValueError(f"unknown views {self.views!r}; choose one of {', '.join(VIEWS)}")
        self.step_overrides = tuple(self.step_overrides)
        self.hold_out = tuple(self.hold_out)
        self.view_augment()  # a bad override or family fails here, not after the data is gathered

    def view_augment(self) -> FamilyAugment | RandomAugment:
        """What makes the positive views: edit families less the held-out ones (and less the
        turns and flips a d4-pooled model gets by construction), or the older steps."""
        seed = self.view_seed_in_use
        if self.views == "steps":
            return RandomAugment(
                seed, with_overrides(STEPS_FOR_INVARIANCE[self.invariance], self.step_overrides)
            )
        exclude = self.hold_out + (D4_EXACT if self.invariance == "d4" else ())
        return FamilyAugment(seed, exclude=exclude, combo_p=self.combo_p)

    @property
    def view_seed_in_use(self) -> int:
        """Seed of the views and the batch order: a fine-tuning stage with a new one sees new
        views of the same images (same data, same held-out split)."""
        return self.seed if self.view_seed is None else self.view_seed

    def to_json(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["sources"]["folders"] = [str(p) for p in self.sources.folders]
        data["sources"]["names"] = list(self.sources.names)
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data.setdefault("views", "steps")  # runs saved before edit families used the steps
        data["hold_out"] = tuple(data.get("hold_out", HELD_OUT_FAMILIES))
        src = dict(data.pop("sources"))
        src["folders"] = [Path(p) for p in src.get("folders", [])]
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known}, sources=Sources(**src))
        config.out_dir = Path(config.out_dir)
        return config


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 1% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """fp16 (bf16 where supported) on CUDA; bf16 on CPUs with fast bf16; otherwise fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def evaluate(
    embedder: Embedder, images: Sequence[Image.Image], transforms: Sequence[str] = VAL_TRANSFORMS
) -> dict[str, float]:
    """recall@1 per transform: does each transformed copy find its own original first?

    Also ``neg_cos``, the mean cosine between different originals: near 1 means collapse.
    """
    if len(images) < 2:
        raise ValueError(f"evaluate needs at least 2 images, not {len(images)}")
    xb = embedder.embed_images(images)
    results: dict[str, float] = {}
    for spec in transforms:
        xq = embedder.embed_images([apply_transform(image, spec) for image in images])
        hits = np.argmax(xq @ xb.T, axis=1) == np.arange(len(images))
        results[spec] = float(hits.mean())
    gram = xb @ xb.T
    n = len(images)
    results["neg_cos"] = float((gram.sum() - np.trace(gram)) / (n * (n - 1)))
    return results


class Trainer:
    """One training run: build or resume, step, validate, checkpoint, export."""

    def __init__(
        self,
        config: TrainConfig,
        train_images: list[Image.Image],
        holdout_images: list[Image.Image],
        data_summary: dict | None = None,
    ) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.dtype = autocast_dtype(self.device)
        self.dataset = PairDataset(train_images, config.size, config.view_seed_in_use, config.view_augment())
        self.holdout = holdout_images
        self.siblings = folder_siblings(train_images) if config.sibling_pairs else None
        self.data_summary = data_summary or {}
        self.steps_per_epoch = len(train_images) // config.batch
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch {config.batch} is larger than the {len(train_images)} training images")
        self.total_steps = self.steps_per_epoch * config.epochs
        self.net = seeded_network(config.arch, config.dim, config.invariance, config.seed)
        if config.init:
            self._load_init(config.init)
        self.net.to(self.device)
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
        self.loss_fn = make_loss(config.loss, config.temperature, config.margin)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype is torch.float16)
        self.step = 0
        self.history: dict = {"steps": [], "epochs": []}
        self.stop_signal: int | None = None

    def _load_init(self, path: str) -> None:
        net, _ = load_checkpoint(path)
        if (net.arch, net.dim) != (self.config.arch, self.config.dim):
            raise ValueError(
                f"{path}: a {net.arch} d{net.dim} checkpoint cannot start a {self.config.arch}"
                f" d{self.config.dim} run (pass --arch {net.arch} --dim {net.dim})"
            )
        self.net.load_state_dict(net.state_dict())
        if self.net.whitening.fitted:  # fitted to the embedding this run is about to change
            self.net.whitening.reset()
            LOG.info("dropped the whitening of %s: run `twice whiten` on the trained model", path)
        LOG.info("starting from the weights in %s", path)

    # state ------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.config.out_dir / "last.pt"

    @property
    def model_path(self) -> Path:
        return self.config.out_dir / "model.pt"

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_json(),
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "data": self.data_summary,
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = state["history"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])

    def save_state(self) -> Path:
        self.config.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name("last.pt.tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(self.state_path)  # a kill mid-write leaves the previous state intact
        return self.state_path

    def export(self, path: str | Path | None = None) -> Path:
        """The fp16 trunk + head checkpoint the embedder loads, with a model card in ``meta``."""
        last = self.history["epochs"][-1] if self.history["epochs"] else {}
        meta = {
            "trained_by": "twice train",
            "step": self.step,
            "total_steps": self.total_steps,
            "config": self.config.to_json(),
            "data": self.data_summary,
            "validation": last.get("recall", {}),
        }
        return save_checkpoint(self.net, path or self.model_path, self.config.size, meta, half=True)

    # training ---------------------------------------------------------------------------------

    def train_step(self, anchors: torch.Tensor, positives: torch.Tensor) -> float:
        """One optimizer step on a batch of pairs; returns the loss."""
        self.net.train()
        x = torch.cat([anchors, positives]).to(self.device, non_blocking=True)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.arange(len(anchors), device=self.device).repeat(2)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            embeddings = self.net.embed_view(x)
        loss = self.loss_fn(embeddings.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        if len(self.holdout) < 2:
            return {}
        info = WeightsInfo("training", f"step{self.step}")
        embedder = Embedder(self.net, info, self.config.size, self.device, self.dtype)
        try:
            return evaluate(embedder, self.holdout)
        finally:
            self.net.train()

    def request_stop(self, signum: int = signal.SIGINT, _frame=None) -> None:
        """Finish the current step, checkpoint, and return (the SIGINT/SIGTERM handler)."""
        LOG.warning("signal %d: stopping after this step and saving %s", signum, self.state_path)
        self.stop_signal = signum

    def run(
        self,
        progress: bool = True,
        on_step: Callable[[Trainer], None] | None = None,
        stop_after: int = 0,
    ) -> str:
        """Train to the end, to a stop signal, or to the end of epoch ``stop_after`` (when > 0) of
        the schedule; returns ``"finished"``, ``"interrupted"`` or ``"paused"``. A paused run is
        saved exactly as an uninterrupted one at that epoch, so ``--resume`` finishes it."""
        previous = {s: signal.signal(s, self.request_stop) for s in STOP_SIGNALS}
        try:
            return self._run(progress, on_step, stop_after)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self, progress: bool, on_step, stop_after: int) -> str:
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not progress)
        with bar:
            while self.step < self.total_steps:
                epoch, done = divmod(self.step, self.steps_per_epoch)
                if stop_after and epoch >= stop_after:
                    return "paused"
                if not self._run_epoch(epoch, done, bar, on_step):
                    self.save_state()
                    return "interrupted"
                self._end_epoch(epoch)
        return "finished"

    def _run_epoch(self, epoch: int, done: int, bar: tqdm, on_step) -> bool:
        self.dataset.epoch = epoch
        batches = epoch_order(
            len(self.dataset),
            self.config.batch,
            self.config.view_seed_in_use,
            epoch,
            self.siblings,
            self.config.sibling_pairs,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches[done : self.steps_per_epoch],
            num_workers=self.config.workers,
            worker_init_fn=functools.partial(_worker_init, os.getpid()) if self.config.workers else None,
        )
        with _stop_signals_blocked():  # the workers are forked here and start with them blocked
            pairs = iter(loader)
        started, seen = time.perf_counter(), 0
        for anchors, positives in pairs:
            loss = self.train_step(anchors, positives)
            seen += 2 * len(anchors)
            rate = seen / (time.perf_counter() - started)
            self.history["steps"].append([self.step, loss, self.scheduler.get_last_lr()[0]])
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
            if on_step:
                on_step(self)
            if self.stop_signal is not None:
                return False
        return True

    def _end_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        recall = self.validate()
        losses = [loss for step, loss, _ in self.history["steps"] if step > epoch * self.steps_per_epoch]
        entry = {
            "epoch": epoch + 1,
            "step": self.step,
            "loss": float(np.mean(losses)) if losses else None,
            "recall": recall,
            "validate_s": round(time.perf_counter() - started, 1),
            "time": time.time(),
        }
        self.history["epochs"].append(entry)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in recall.items())
        LOG.info(
            "epoch %d/%d step %d loss %.4f | %s",
            epoch + 1,
            self.config.epochs,
            self.step,
            entry["loss"] or 0,
            shown,
        )
        self.save_state()
        self.export()
        write_history(self.history, self.config.out_dir)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (delivered on exit) while workers fork: they inherit the mask,
    so none can be stopped before ``_worker_init`` has made it ignore them."""
    if not hasattr(signal, "pthread_sigmask"):  # not on Windows
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _worker_init(parent: int, _worker_id: int) -> None:
    """An augmentation worker ignores the stop signals and dies with ``parent``.

    A SIGTERM to the process group (a session's end, ``kill -- -PGID``, systemd) or a Ctrl-C
    reaches the workers too; were they to die of it, the main process would fail on the lost
    worker instead of saving last.pt. The main process stops them itself once it has saved.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent(parent)
    torch.set_num_threads(1)  # augmentation workers must not fight the network for cores


def write_history(history: dict, out_dir: Path) -> None:
    """history.json plus curve.png (loss per step, recall@1 per transform per epoch)."""
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    try:
        plot_curve(history, out_dir / "curve.png")
    except ImportError:
        LOG.warning("matplotlib is not installed: no curve.png (pip install matplotlib)")


def plot_curve(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = np.array([row[:2] for row in history["steps"]], dtype=float).reshape(-1, 2)
    if len(steps):
        left.plot(steps[:, 0], steps[:, 1], alpha=0.3, color="tab:blue", label="loss")
        window = max(1, len(steps) // 50)
        smooth = np.convolve(steps[:, 1], np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1 :, 0], smooth, color="tab:blue", label=f"mean of {window}")
    left.set(xlabel="step", ylabel="training loss", title="loss")
    left.legend()
    epochs = history["epochs"]
    names = sorted({k for e in epochs for k in e["recall"]} - {"neg_cos"})
    colours = plt.cm.tab20(np.linspace(0, 1, max(1, len(names))))  # 13 transforms: no repeats
    for name, colour in zip(names, colours, strict=True):
        xs, ys = [e["epoch"] for e in epochs], [e["recall"].get(name) for e in epochs]
        right.plot(xs, ys, marker=".", label=name, color=colour)
    right.set(xlabel="epoch", ylabel="recall@1", title="held-out recall@1 per transform", ylim=(0, 1.02))
    if epochs:
        right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# building a run -----------------------------------------------------------------------------


def prepare_data(config: TrainConfig, progress: bool = True) -> tuple[list, list, dict]:
    """(train images, held-out images, summary) for a config; the same files give the same split."""
    paths = gather_paths(config.sources, config.out_dir / "data")
    images, counts = [], {}
    for name, files in paths.items():
        loaded = load_images(files, max_side=2 * config.size, progress=progress)
        counts[name] = len(loaded)
        images.extend(loaded)
    if len(images) < config.holdout + config.batch:
        raise ValueError(
            f"only {len(images)} training images: need holdout {config.holdout} + batch {config.batch}"
        )
    train, holdout = split_holdout(images, config.holdout, config.seed)
    summary = {"sources": counts, "train": len(train), "holdout": len(holdout)}
    return train, holdout, summary


def build_trainer(config: TrainConfig, resume: bool = False, progress: bool = True) -> Trainer:
    """A new run, or the one saved in ``config.out_dir/last.pt`` when ``resume``.

    On resume the saved config wins, except where the run's files live, the device and
    the worker count, which do not change what is computed.
    """
    state = None
    if resume:
        path = config.out_dir / "last.pt"
        if not path.is_file():
            raise ValueError(f"nothing to resume: {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a twice training state")
        saved = TrainConfig.from_json(state["config"])
        saved.out_dir, saved.device, saved.workers = config.out_dir, config.device, config.workers
        config = saved
    train, holdout, summary = prepare_data(config, progress)
    if state is not None and state.get("data") and state["data"] != summary:
        LOG.warning("training data changed since the run started: %s, now %s", state["data"], summary)
    trainer = Trainer(config, train, holdout, summary)
    if state is not None:
        trainer.load_state_dict(state)
        LOG.info("resumed %s at step %d of %d", config.out_dir, trainer.step, trainer.total_steps)
    return trainer
