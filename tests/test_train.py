"""twice train on a tiny CPU configuration: steps, checkpoints, signals, exact resume, export."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, make_options
from imagegen import make_image, write_images
from processes import alive, wait_for_children
from twice.augment.sources import APT_SOURCES
from twice.cli import main
from twice.model import Embedder
from twice.model.train import TrainConfig, Trainer, build_trainer, evaluate, lr_factor
from twice.model.training_data import (
    PairDataset,
    Sources,
    epoch_order,
    folder_siblings,
    gather_paths,
    load_images,
    split_holdout,
)
from twice.model.weights import file_sha256

SIZE = 32  # the smallest input VGG's four pools accept; keeps a step around a second on CPU


def tiny_args(data: Path, out: Path) -> list[str]:
    return [
        "train", "--data", str(data), "--sources", "none", "--out", str(out), "--size", str(SIZE),
        "--batch", "3", "--epochs", "2", "--steps-per-epoch", "2", "--holdout", "4", "--dim", "16",
        "--warmup", "1", "--lr", "1e-3", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-images")
    write_images(root, 14)
    return root


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory) -> tuple[Path, int, str]:
    """One whole tiny run through the CLI, as a user would start it."""
    logging.getLogger("twice.model.weights").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("run") / "a"
    data_dir = out.parent / "data"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", "--data-dir", str(data_dir), *tiny_args(folder, out)])
    return out, code, printed.getvalue()


def test_cli_run_trains_checkpoints_and_plots(uninterrupted):
    out, code, printed = uninterrupted
    assert code == 0, printed
    assert "finished 4 steps" in printed and "rotate" in printed
    for name in ("last.pt", "model.pt", "history.json", "curve.png"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "history.json").read_text())
    assert [e["step"] for e in history["epochs"]] == [2, 4]
    assert [row[0] for row in history["steps"]] == [1, 2, 3, 4]
    recall = history["epochs"][-1]["recall"]
    assert {"rotate", "mirror", "bright", "dark", "crop:0.8", "jpeg:20"} <= set(recall)
    assert all(0.0 <= v <= 1.0 for k, v in recall.items() if k != "neg_cos")


def test_signal_then_resume_gives_the_same_weights_as_an_uninterrupted_run(uninterrupted, tmp_path):
    out_a, _, _ = uninterrupted
    state_a = torch.load(out_a / "last.pt", map_location="cpu", weights_only=False)
    config = TrainConfig.from_json(state_a["config"])
    config.out_dir = tmp_path / "b"
    trainer = build_trainer(config, progress=False)

    def sigterm_at_step_3(t: Trainer) -> None:
        if t.step == 3:  # mid-epoch: the resume must skip exactly the batches already done
            os.kill(os.getpid(), signal.SIGTERM)

    assert trainer.run(progress=False, on_step=sigterm_at_step_3) == "interrupted"
    assert trainer.step == 3
    resumed = build_trainer(TrainConfig(out_dir=config.out_dir, device="cpu"), resume=True, progress=False)
    assert resumed.step == 3 and resumed.config.size == SIZE and resumed.config.batch == 3
    assert resumed.run(progress=False) == "finished"
    state_b = torch.load(config.out_dir / "last.pt", map_location="cpu", weights_only=False)
    for name, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][name]), name
    assert state_a["optimizer"]["state"][0]["exp_avg"].equal(state_b["optimizer"]["state"][0]["exp_avg"])
    assert [row[1] for row in state_a["history"]["steps"]] == [row[1] for row in state_b["history"]["steps"]]


def test_stop_after_then_resume_through_the_cli_equals_an_uninterrupted_run(uninterrupted, folder, tmp_path):
    out_a, _, _ = uninterrupted
    out_b = tmp_path / "b"
    data_dir = ["-q", "--data-dir", str(tmp_path / "data")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*data_dir, *tiny_args(folder, out_b), "--stop-after", "1"]) == 0
        paused = torch.load(out_b / "last.pt", map_location="cpu", weights_only=False)
        assert main([*data_dir, "train", "--resume", "--out", str(out_b), "--device", "cpu"]) == 0
    assert "stopped after epoch 1 (step 2 of 4)" in printed.getvalue() and "--resume" in printed.getvalue()
    assert paused["step"] == 2 and (out_b / "model.pt").is_file()
    state_a = torch.load(out_a / "last.pt", map_location="cpu", weights_only=False)
    state_b = torch.load(out_b / "last.pt", map_location="cpu", weights_only=False)
    for name, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][name]), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")
def test_sigterm_to_the_process_group_saves_the_state_and_resume_continues(folder, tmp_path):
    """As a session end, `kill -- -PGID` or systemd stop it: the augmentation workers get the
    SIGTERM too, and must leave stopping to the main process, which saves last.pt."""
    out, data_dir = tmp_path / "run", tmp_path / "data"
    args = tiny_args(folder, out)
    args[args.index("--epochs") + 1] = "50"  # far more than the test lets it run
    command = [sys.executable, "-m", "twice", "-q", "--data-dir", str(data_dir), *args, "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    workers: list[int] = []
    try:
        workers = wait_for_children(process, 2, seconds=180)
        assert len(workers) >= 2, f"no augmentation workers seen: {process.communicate()[1][-2000:]}"
        time.sleep(0.3)  # past the workers' start-up
        os.killpg(process.pid, signal.SIGTERM)
        printed, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 130, errors[-2000:]
    assert "interrupted at step" in printed and "--resume" in printed, printed
    assert not [pid for pid in workers if alive(pid)], "workers outlived the run"
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    steps_per_epoch, total = 2, 100  # --steps-per-epoch 2, --epochs 50
    assert 1 <= saved["step"] < total
    stop_after = saved["step"] // steps_per_epoch + 1  # the end of the epoch it was stopped in
    with contextlib.redirect_stdout(io.StringIO()) as resumed:
        code = main(["-q", "--data-dir", str(data_dir), "train", "--resume", "--out", str(out),
                     "--device", "cpu", "--stop-after", str(stop_after)])  # fmt: skip
    assert code == 0, resumed.getvalue()
    continued = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert continued["step"] == stop_after * steps_per_epoch
    assert [row[0] for row in continued["history"]["steps"]] == list(range(1, continued["step"] + 1))


def test_exported_checkpoint_loads_in_the_embedder(uninterrupted, tmp_path):
    out, _, _ = uninterrupted
    embedder = Embedder.from_options(make_options(tmp_path, checkpoint=str(out / "model.pt")))
    assert embedder.weights.source == "checkpoint" and embedder.image_size == SIZE
    assert embedder.net.arch == "vgg16_bn" and embedder.dim == 16
    assert f"vgg16_bn-d16-s{SIZE}-d4-checkpoint-" in embedder.version
    assert embedder.weights.meta["step"] == 4 and embedder.weights.meta["trained_by"] == "twice train"
    assert os.path.getsize(out / "model.pt") < 40e6
    xb = embedder.embed_images([make_image(i) for i in range(3)])
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-4)


def test_one_step_lowers_the_loss_on_a_fixed_batch(folder):
    config = TrainConfig(
        out_dir=Path("unused"), size=SIZE, batch=4, dim=16, warmup=0, lr=1e-3, holdout=0, device="cpu",
        sources=Sources([], [folder]),
    )  # fmt: skip
    images = load_images(sorted(folder.iterdir()), max_side=64, progress=False)
    trainer = Trainer(config, images, [])
    anchors, positives = zip(*(trainer.dataset[i] for i in range(4)), strict=True)
    a, p = torch.stack(anchors), torch.stack(positives)

    def batch_loss() -> float:
        trainer.net.eval()  # fixed BN statistics, so only the weights change between the two
        with torch.no_grad():
            z = trainer.net(torch.cat([a, p]))
        return float(trainer.loss_fn(z, torch.arange(4).repeat(2)))

    before = batch_loss()
    for _ in range(2):
        trainer.train_step(a, p)
    assert batch_loss() < before


def test_cli_errors_name_the_problem(folder, tmp_path, capsys):
    out = tmp_path / "nothing"
    assert main(["--data-dir", str(tmp_path), "train", "--out", str(out), "--resume", "--sources", "none",
                 "--data", str(folder)]) == 1  # fmt: skip
    assert f"nothing to resume: {out / 'last.pt'} not found" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "train", "--sources", "nope"]) == 1
    assert "unknown training source 'nope'" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "train", "--sources", "none"]) == 1
    assert "no training data" in capsys.readouterr().err
    args = tiny_args(folder, tmp_path / "c")
    args[args.index("--holdout") + 1] = "13"
    assert main(["-q", "--data-dir", str(tmp_path), *args]) == 1
    assert "only 14 training images: need holdout 13 + batch 3" in capsys.readouterr().err


def test_pairs_and_batches_are_pure_functions_of_seed_epoch_index(folder):
    images = load_images(sorted(folder.iterdir()), max_side=64, progress=False)
    data = PairDataset(images, SIZE, seed=5)
    data.epoch = 2
    a1, p1 = data[3]
    data.epoch = 1
    other = data[3][1]
    data.epoch = 2
    a2, p2 = data[3]
    assert torch.equal(a1, a2) and torch.equal(p1, p2) and not torch.equal(p1, other)
    batches = epoch_order(14, 4, seed=0, epoch=0)
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 12 and batches == epoch_order(14, 4, seed=0, epoch=0)
    assert batches != epoch_order(14, 4, seed=0, epoch=1)
    train, held = split_holdout(list(range(14)), 4, seed=0)
    assert len(held) == 4 and sorted(train + held) == list(range(14))
    with pytest.raises(ValueError, match="holdout must be in 0..13 for 14 images, not 14"):
        split_holdout(list(range(14)), 14, seed=0)


def test_bad_and_tiny_files_are_skipped_and_counted(tmp_path, caplog):
    good = write_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "broken.png").write_bytes(good[0].read_bytes()[:60])
    make_image(1, (40, 40)).resize((10, 10)).save(tmp_path / "imgs" / "tiny.png")
    files = sorted((tmp_path / "imgs").iterdir())
    with caplog.at_level(logging.INFO, logger="twice.model.training_data"):
        images = load_images(files, max_side=40, progress=False)
    assert len(images) == 2 and max(images[0].size) == 40
    assert "training image skipped" in caplog.text and "broken.png" in caplog.text
    assert "2 of 4 training files skipped" in caplog.text


def test_sources_generated_bundled_and_missing(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(APT_SOURCES, "tuxpaint", ("tuxpaint-stamps-default", tmp_path / "no-stamps"))
    with caplog.at_level(logging.WARNING):
        found = gather_paths(Sources(["synthetic", "tuxpaint"], synthetic_count=3), tmp_path / "cache")
    # Collection 1000, not the bench's collection 0: training never sees the bench's images.
    assert [p.name for p in found["synthetic"]] == [f"synthetic-1000-0000{i}.jpg" for i in range(3)]
    assert "tuxpaint" not in found and "apt-get install tuxpaint-stamps-default" in caplog.text
    with pytest.raises(ValueError, match="unknown training source 'flickr'"):
        Sources(["flickr"])
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        gather_paths(Sources([], [tmp_path / "no-such-folder"]), tmp_path / "cache")


def test_bundled_skimage_samples_without_the_benchs_images(tmp_path):
    pytest.importorskip("skimage")
    every = gather_paths(Sources(["skimage"], exclude_bench=False), tmp_path)["skimage"]
    assert any(p.name == "astronaut.png" for p in every) and all(p.is_file() for p in every)
    kept = gather_paths(Sources(["skimage"]), tmp_path)["skimage"]
    names = {p.name for p in kept}
    assert kept and set(kept) < set(every)
    assert not names & {"astronaut.png", "chelsea.png", "clock_motion.png", "color.png"}


def test_evaluate_recall_and_collapse_indicator(embedder):
    images = [make_image(i) for i in range(4)]
    recall = evaluate(embedder, images, ["crop:1.0", "rotate"])
    assert recall["crop:1.0"] == 1.0  # identical pixels find themselves
    assert 0.0 <= recall["rotate"] <= 1.0 and -1.0 <= recall["neg_cos"] <= 1.0
    with pytest.raises(ValueError, match="at least 2 images, not 1"):
        evaluate(embedder, images[:1])


def test_schedule_warms_up_then_decays():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="bad batch 1"):
        TrainConfig(batch=1)


def test_init_starts_from_a_checkpoint_and_refuses_a_mismatch(uninterrupted, folder):
    out, _, _ = uninterrupted
    images = load_images(sorted(folder.iterdir()), max_side=64, progress=False)
    config = TrainConfig(out_dir=out.parent / "fine", size=SIZE, batch=3, dim=16, holdout=0, device="cpu",
                         init=str(out / "model.pt"), sources=Sources([], [folder]))  # fmt: skip
    trainer = Trainer(config, images, [])
    exported = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(trainer.net.head.weight, exported["head.weight"].float())
    config.dim = 32
    with pytest.raises(ValueError, match="a vgg16_bn d16 checkpoint cannot start a vgg16_bn d32 run"):
        Trainer(config, images, [])


def test_view_seed_gives_new_views_of_the_same_images(folder, tmp_path):
    images = load_images(sorted(folder.iterdir()), max_side=64, progress=False)
    base = TrainConfig(out_dir=tmp_path, size=SIZE, batch=3, dim=16, holdout=0, device="cpu",
                       sources=Sources([], [folder]))  # fmt: skip
    restaged = dataclasses.replace(base, view_seed=7)
    same, new = Trainer(base, images, []).dataset, Trainer(restaged, images, []).dataset
    same.epoch = new.epoch = 1
    assert same.images == new.images and not torch.equal(same[0][1], new[0][1])
    assert base.view_seed_in_use == 0 and TrainConfig.from_json(restaged.to_json()).view_seed_in_use == 7


def test_step_overrides_change_the_views_and_survive_a_resume(folder, tmp_path):
    images = load_images(sorted(folder.iterdir()), max_side=64, progress=False)
    base = TrainConfig(out_dir=tmp_path, size=SIZE, batch=3, dim=16, holdout=0, device="cpu",
                       views="steps", sources=Sources([], [folder]))  # fmt: skip
    brighter = dataclasses.replace(base, step_overrides=("bright:1:100:100",))
    plain, bright = Trainer(base, images, []).dataset, Trainer(brighter, images, []).dataset
    plain.epoch = bright.epoch = 1
    assert plain[0][0].shape == bright[0][0].shape and not torch.equal(plain[0][1], bright[0][1])
    assert TrainConfig.from_json(json.loads(json.dumps(brighter.to_json()))) == brighter
    with pytest.raises(ValueError, match="probability"):
        dataclasses.replace(base, step_overrides=("bright:3",))


def test_family_views_leave_the_held_out_families_and_exact_turns_out():
    views = TrainConfig(invariance="d4").view_augment()
    drawn = {spec.split(":")[0] for _ in range(400) for spec in views.sample_specs()}
    assert {"tilt", "border", "pad", "cropbox", "caption"} & drawn
    assert not drawn & {"perspective", "sticker", "rotate", "mirror"}
    single = TrainConfig(invariance="none", hold_out=("tilt",)).view_augment()
    drawn = {spec.split(":")[0] for _ in range(400) for spec in single.sample_specs()}
    assert "rotate" in drawn and "perspective" in drawn and "tilt" not in drawn
    old_run = TrainConfig(views="steps").to_json()
    del old_run["views"], old_run["hold_out"], old_run["combo_p"]
    assert TrainConfig.from_json(old_run).views == "steps"  # runs saved before families resume as they were


def test_whiten_fits_on_training_images_and_training_from_it_drops_it(uninterrupted, folder, tmp_path):
    out, _, _ = uninterrupted
    whitened = tmp_path / "white.pt"
    printed = io.StringIO()
    sources = ["--sources", "synthetic", "--synthetic", "20", "--data", str(folder)]
    args = ["whiten", "--out", str(whitened), *sources]
    with contextlib.redirect_stdout(printed):  # 34 images: a 16-d whitening needs 32
        code = main(["-q", "--data-dir", str(tmp_path / "d"), "--checkpoint", str(out / "model.pt"), *args])
    assert code == 0 and f"wrote {whitened}" in printed.getvalue()
    few = ["whiten", "--out", str(tmp_path / "few.pt"), "--sources", "none", "--data", str(folder)]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        failed = main(["-q", "--data-dir", str(tmp_path / "d"), "--checkpoint", str(out / "model.pt"), *few])
    assert failed != 0 and "needs at least 32 images; the sources hold 14" in err.getvalue()
    assert not (tmp_path / "few.pt").exists()
    blob = torch.load(whitened, weights_only=True)
    record = blob["meta"]["whitening"]
    assert record["images"] == 34 and record["sources"] == {"synthetic": 20, str(folder): 14}
    assert blob["meta"]["trained_by"] == "twice train"  # the training record is kept
    assert record["fitted_on"] == file_sha256(out / "model.pt")
    # Whitening the whitened file again refits on the same layers: the very same file (under
    # the same name: torch.save writes the file's name into the archive).
    (tmp_path / "again").mkdir()
    again = tmp_path / "again" / whitened.name
    rewhiten = ["whiten", "--out", str(again), *sources]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["-q", "--data-dir", str(tmp_path / "d"), "--checkpoint", str(whitened), *rewhiten]) == 0
    assert file_sha256(again) == file_sha256(whitened)
    net = Embedder.from_options(make_options(tmp_path, checkpoint=str(whitened))).net
    assert net.whitening.fitted
    images = load_images(sorted(folder.iterdir()), max_side=64, progress=False)
    config = TrainConfig(out_dir=tmp_path / "fine", size=SIZE, batch=3, dim=16, holdout=0, device="cpu",
                         init=str(whitened), sources=Sources([], [folder]))  # fmt: skip
    assert not Trainer(config, images, []).net.whitening.fitted


def test_sibling_slots_hold_folder_mates_and_never_the_same_drawing_twice(tmp_path):
    deck = write_images(tmp_path / "deck", 6)
    write_images(tmp_path / "jigsaw", 4, start=6)
    (alone,) = write_images(tmp_path / "alone", 1, start=10)
    filed_twice = tmp_path / "deck" / "same-drawing.png"
    shutil.copy(deck[0], filed_twice)
    files = sorted(tmp_path.glob("*/*.png"))
    images = load_images(files, max_side=64, progress=False)
    siblings = folder_siblings(images)
    copy, original = files.index(filed_twice), files.index(deck[0])
    assert original not in siblings[copy] and copy not in siblings[original]
    assert all(files[j].parent == files[i].parent and j != i for i, sibs in enumerate(siblings) for j in sibs)
    assert len(siblings[files.index(deck[1])]) == 6 and siblings[files.index(alone)] == []
    plain = epoch_order(len(images), 6, seed=3, epoch=0)
    hard = epoch_order(len(images), 6, seed=3, epoch=0, siblings=siblings, pairs=2)
    assert hard == epoch_order(len(images), 6, seed=3, epoch=0, siblings=siblings, pairs=2)
    assert hard != plain and all(len(set(b)) == 6 for b in hard)
    for old, new in zip(plain, hard, strict=True):
        assert new[:4] == old[:4]
        assert all(j in old or any(j in siblings[i] for i in new[:4]) for j in new[4:])
    with pytest.raises(ValueError, match="sibling pairs must be in 1..3 for batch 6, not 4"):
        epoch_order(len(images), 6, seed=3, epoch=0, siblings=siblings, pairs=4)
