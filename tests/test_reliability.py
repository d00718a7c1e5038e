"""Reliability probes (issue 14): crash safety, one writer per run, no poisoned checkpoints, and a
clear one-line error for every bad input. Tiny presets; subprocesses only where a real second
process is the point (kill -9, the lock)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nestar.cli.eval import load_images
from nestar.cli.main import main
from nestar.config import apply_overrides
from nestar.data import DataError, TensorImageDataset
from nestar.registry import get_preset
from nestar.training import Trainer, TrainingDivergedError
from nestar.utils.lock import LOCK_NAME, RunLock

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--preset=nestar-tiny", "--quiet", "--train.device=cpu", "--train.sample_every=0"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def needs_fmnist():
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")


def run_main(capsys, *argv: str) -> tuple[int, str]:
    """`nestar ARGV` in this process: (exit status, stderr). argparse errors exit via SystemExit."""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # The same thread count as this process: float reductions then add up in the same order (bit-exact resume).
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONUNBUFFERED="1")
    return env


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("model.", "ema.", "optim."))}


def assert_same_state(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and [k for k in ta if not torch.equal(ta[k], tb[k])] == []


def log_steps(run: Path) -> list[str]:
    return [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step nestar-tiny run directory (for the sample/eval probes)."""
    needs_fmnist()
    run = tmp_path_factory.mktemp("rel") / "run"
    assert main(["train", *TINY, f"--run-dir={run}", "--train.steps=2"]) == 0
    return run


def poisoned_copy(run: Path, dst: Path, edit) -> Path:
    """A copy of the run's last checkpoint whose tensors/metadata went through `edit(tensors, meta)`,
    written with safetensors directly (nestar itself refuses to write such files)."""
    src = run / "checkpoints" / "last.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(src))
    edit(t, meta)
    save_file(t, str(dst), metadata=meta)
    return dst


# ----- no poisoned checkpoints ------------------------------------------------------------------
@pytest.mark.parametrize("lr", ["1e30", "1e38"])
def test_diverging_update_never_reaches_a_checkpoint(tmp_path, capsys, lr):
    needs_fmnist()
    run = tmp_path / "run"
    base = [*TINY, f"--run-dir={run}", "--train.ckpt_every=1"]
    assert main(["train", *base, "--train.steps=2"]) == 0
    last = run / "checkpoints" / "last.safetensors"
    before = last.read_bytes()
    rc, err = run_main(capsys, "train", *base, "--train.steps=4", f"--train.lr={lr}", "--allow-config-change")
    assert rc == 2 and "Traceback" not in err
    assert "diverged by step 3" in err and "(step 2) is intact" in err and str(last) in err
    assert last.read_bytes() == before and list(run.rglob("*.tmp")) == []
    # A sane learning rate continues from the intact step-2 checkpoint.
    assert main(["train", *base, "--train.steps=4"]) == 0
    assert all(torch.isfinite(v).all() for v in tensors(last).values())


def test_nonfinite_values_are_refused_at_save_and_at_load(tmp_path, capsys, trained_run):
    def nan_weight(t, meta):
        t[next(k for k in t if k.startswith("ema."))].view(-1)[0] = float("nan")

    bad = poisoned_copy(trained_run, tmp_path / "nan.safetensors", nan_weight)
    rc, err = run_main(capsys, "sample", str(bad), "--out", str(tmp_path / "x.png"), "--per-class=1")
    assert rc == 2 and "non-finite" in err and "Traceback" not in err and not (tmp_path / "x.png").exists()
    rc, err = run_main(capsys, "eval", "--checkpoint", str(bad), "--num-samples=2", "--out", str(tmp_path / "m.json"))
    assert rc == 2 and "non-finite" in err

    cfg = apply_overrides(get_preset("nestar-tiny"), ["train.device='cpu'", "train.steps=1"])
    images, labels = torch.zeros(16, 1, 32, 32, dtype=torch.uint8), torch.arange(16) % 10
    t = Trainer(cfg, tmp_path / "direct", progress=False, dataset=TensorImageDataset(images, labels))
    with torch.no_grad():
        next(t.model.parameters()).view(-1)[0] = float("inf")  # as if the update had overflowed
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written"):
        t._save(0.0)
    assert not t.ckpt_path.exists()
    t.close()


# ----- crash safety -----------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import nestar.serialization as C
    real, calls = C.save_file, [0]
    def dying_save(tensors, path, metadata=None):
        calls[0] += 1
        real(tensors, path, metadata=metadata)
        if calls[0] == int(sys.argv[1]):  # kill -9 half-way through writing this checkpoint
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    C.save_file = dying_save
    from nestar.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


def test_kill_during_checkpoint_write_then_resume_is_bit_exact(tmp_path, capsys):
    needs_fmnist()
    args = [*TINY, "--train.steps=6", "--train.ckpt_every=2", "--train.log_every=1"]
    assert main(["train", *args, f"--run-dir={tmp_path / 'straight'}"]) == 0
    run = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "2", "train", *args, f"--run-dir={run}"],
                       env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert len(list((run / "checkpoints").glob(".*.tmp"))) == 1 and (run / LOCK_NAME).exists()
    capsys.readouterr()
    assert main(["train", *args, f"--run-dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "took over the stale lock" in out and "removed 1 orphaned temporary file" in out
    assert_same_state(tmp_path / "straight" / "checkpoints" / "last.safetensors", run / "checkpoints" / "last.safetensors")
    assert log_steps(run) == log_steps(tmp_path / "straight") == ["step", "1", "2", "3", "4", "5", "6"]
    assert list(run.rglob("*.tmp")) == [] and not (run / LOCK_NAME).exists()


def test_unreadable_last_checkpoint_falls_back_to_prev(tmp_path, capsys):
    needs_fmnist()
    args = [*TINY, "--train.steps=6", "--train.ckpt_every=2"]
    assert main(["train", *args, f"--run-dir={tmp_path / 'straight'}"]) == 0
    run = tmp_path / "run"
    assert main(["train", *args, f"--run-dir={run}", "--max-steps=4"]) == 0
    last = run / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. a disk error
    capsys.readouterr()
    assert main(["train", *args, f"--run-dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "truncated or corrupt" in out and "resuming from the previous checkpoint" in out
    assert (run / "checkpoints" / "last.safetensors.corrupt").exists()
    assert_same_state(tmp_path / "straight" / "checkpoints" / "last.safetensors", last)


def test_log_rewrite_survives_an_empty_or_cut_log(tmp_path, capsys):
    needs_fmnist()
    run = tmp_path / "run"
    args = [*TINY, f"--run-dir={run}", "--train.ckpt_every=2", "--train.log_every=1"]
    assert main(["train", *args, "--train.steps=2"]) == 0
    log = run / "log.csv"
    log.write_text(log.read_text() + "3,0.5")  # a row cut by a kill mid-append, past the checkpoint
    assert main(["train", *args, "--train.steps=3"]) == 0
    assert log_steps(run) == ["step", "1", "2", "3"]
    log.write_text("")  # what a kill during a non-atomic rewrite used to leave
    assert main(["train", *args, "--train.steps=4"]) == 0
    assert log_steps(run) == ["step", "4"]


# ----- one writer per run -----------------------------------------------------------------------
HOLD_SCRIPT = textwrap.dedent("""
    import sys, time
    from nestar.utils.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    needs_fmnist()
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(run)], env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err = run_main(capsys, "train", *TINY, f"--run-dir={run}", "--train.steps=1")
        assert rc == 2 and "Traceback" not in err
        assert f"is in use by PID {holder.pid}" in err and "--run-dir" in err
        assert not (run / "config.json").exists() and not (run / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert main(["train", *TINY, f"--run-dir={run}", "--train.steps=1"]) == 0
    assert f"took over the stale lock {run / LOCK_NAME}: PID {holder.pid} is no longer running" in capsys.readouterr().out
    assert not (run / LOCK_NAME).exists()


def test_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "x"}))
    with pytest.raises(Exception, match="cannot be checked from this host.*delete"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).unlink()
    with RunLock(tmp_path) as lock:  # within one process a newer lock object takes over (Trainer objects)
        assert RunLock(tmp_path).acquire().held and not lock.held


# ----- eval --images skips unreadable files like training does ----------------------------------
def test_eval_images_skip_and_count_unreadable_files(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    notes: list[str] = []
    images, labels = load_images(str(tmp_path), 1, 32, notes)
    assert images.shape == (3, 1, 32, 32) and labels is None
    assert any("skipped 1 unreadable image file(s) of 4" in n for n in notes)


# ----- bad inputs: one line, no traceback, the field named --------------------------------------
def _fmnist_with_labels(d: Path, labels: np.ndarray) -> str:
    d.mkdir()
    os.symlink(FMNIST / "train-images-idx3-ubyte.gz", d / "train-images-idx3-ubyte.gz")
    header = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big")
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())
    return str(d)


def _folder(d: Path, readable: int, bad: int = 0, size: int = 16, empty_class: bool = False) -> str:
    (d / "0").mkdir(parents=True)
    for i in range(readable):
        Image.fromarray(np.full((size, size), i, np.uint8)).save(d / "0" / f"{i}.png")
    for i in range(bad):
        (d / "0" / f"bad{i}.png").write_bytes(b"\x89PNG not really")
    if empty_class:
        (d / "1").mkdir()
    return str(d)


def _config_file(d: Path, edit) -> str:
    from nestar.registry import config_to_dict

    data = config_to_dict(get_preset("nestar-tiny"))
    data = edit(data)
    path = d / "cfg.json"
    path.write_text(json.dumps(data))
    return str(path)


def _set(data: dict, section: str, key: str, value) -> dict:
    data[section][key] = value
    return data


FOLDER = ["--data.name=folder", "--data.num_classes=1"]
# (id, argv builder (tmp_path -> argv tail after the command), substring the message must contain)
TRAIN_CASES = [
    ("cuda", lambda d: ["--train.device=cuda"], "train.device"),
    ("lr<0", lambda d: ["--train.lr=-1"], "train.lr"),
    ("lr=inf", lambda d: ["--train.lr=1e309"], "train.lr"),
    ("dim", lambda d: ["--model.dim=33"], "model.head_dim"),
    ("head_dim=0", lambda d: ["--model.head_dim=0"], "model.head_dim"),
    ("patch0", lambda d: ["--tokenizer.patch_size=0"], "tokenizer.patch_size"),
    ("patch3", lambda d: ["--tokenizer.patch_size=3"], "tokenizer.patch_size"),
    ("workers", lambda d: ["--train.num_workers=-1"], "train.num_workers"),
    ("seed", lambda d: ["--train.seed=99999999999999999999"], "train.seed"),
    ("warmup", lambda d: ["--train.warmup_steps=-1"], "train.warmup_steps"),
    ("log_every", lambda d: ["--train.log_every=-1"], "train.log_every"),
    ("ckpt_every", lambda d: ["--train.ckpt_every=-5"], "train.ckpt_every"),
    ("ema", lambda d: ["--train.ema_decay=2"], "train.ema_decay"),
    ("betas-cli", lambda d: ["--train.betas=(0.9,)"], "train.betas"),
    ("max-steps", lambda d: ["--max-steps=0"], "--max-steps"),
    ("fm-channels", lambda d: ["--data.channels=3"], "data.channels"),
    ("fm-classes", lambda d: ["--data.num_classes=5"], "num_classes"),
    ("channels2", lambda d: ["--data.channels=2"], "data.channels"),
    ("cfg-schedule", lambda d: ["--sample.cfg_schedule=cosine"], "sample.cfg_schedule"),
    ("temperature", lambda d: ["--sample.temperature=-1"], "sample.temperature"),
    ("cfg<0", lambda d: ["--sample.cfg=-2"], "sample.cfg"),
    ("num_steps", lambda d: ["--sample.num_steps=0"], "sample.num_steps"),
    ("unknown", lambda d: ["--train.lrr=1"], "train.lrr"),
    ("betas-file", lambda d: ["--config", _config_file(d, lambda c: _set(c, "train", "betas", [0.9]))], "train.betas"),
    ("model-null", lambda d: ["--config", _config_file(d, lambda c: {**c, "model": None})], "model"),
    ("model-missing", lambda d: ["--config", _config_file(d, lambda c: {k: v for k, v in c.items() if k != "model"})],
     '"model" section'),
    ("list-config", lambda d: ["--config", _config_file(d, lambda c: [c])], "JSON object"),
    ("preset-path", lambda d: ["--config", _config_file(d, lambda c: {**c, "preset": "../../../x"})], "preset"),
    ("bad-json", lambda d: ["--config", str(d / "x.json")] if (d / "x.json").write_text("{") else [], "not valid JSON"),
    ("data_dir-file", lambda d: [*FOLDER, f"--data.data_dir={_config_file(d, lambda c: c)}"], "not a directory"),
    ("symlink-loop", lambda d: [*FOLDER, f"--data.data_dir={d / 'loop'}"] if os.symlink(d / "loop", d / "loop") is None
     else [], "does not exist"),
    ("few-readable", lambda d: [*FOLDER, f"--data.data_dir={_folder(d / 'f', readable=3, bad=20)}"],
     "fewer than one batch"),
    ("all-unreadable", lambda d: [*FOLDER, f"--data.data_dir={_folder(d / 'f', readable=0, bad=5)}"], "none of its"),
    ("empty-class", lambda d: ["--data.name=folder", "--data.num_classes=2",
                               f"--data.data_dir={_folder(d / 'f', readable=9, empty_class=True)}"], "hold no images"),
    ("fm-labels", lambda d: [f"--data.data_dir={_fmnist_with_labels(d / 'fm', np.r_[np.arange(59_990) % 10, [10] * 10])}"],
     "10 label(s) outside [0, 10)"),
    ("fm-labels-count", lambda d: [f"--data.data_dir={_fmnist_with_labels(d / 'fm', np.arange(5) % 10)}"],
     "images but 5 labels"),
]


def test_config_file_without_new_nestar_fields_says_what_they_read_as(tmp_path, capsys):
    """A hand-written NestAR config that leaves out a field added later gets the value older runs
    were trained with (so old run configs keep loading): the CLI says so instead of staying silent."""
    drop = lambda c: {**c, "model": {k: v for k, v in c["model"].items() if k != "order_offset"}}
    path = _config_file(tmp_path, drop)
    rc, err = run_main(capsys, "train", "--config", path, "--keys")
    assert rc == 0 and "model.order_offset=0" in err and "neighbour_context" not in err, err
    rc, err = run_main(capsys, "train", "--config", _config_file(tmp_path, lambda c: c), "--keys")
    assert rc == 0 and "leaves out" not in err, err


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_train_inputs_fail_in_one_line(tmp_path, capsys, case):
    name, build, needle = case
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if name.startswith("fm") and name != "fm-channels" and name != "fm-classes":
        needs_fmnist()
    run = tmp_path / "run"
    rc, err = run_main(capsys, "train", *TINY, f"--run-dir={run}", "--train.steps=1", *build(tmp_path))
    assert rc == 2 and "Traceback" not in err, err
    assert needle in err, err
    assert not (run / "checkpoints").exists()  # nothing trained


def test_bombs_only_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # every 16x16 image is now a decompression bomb
    rc, err = run_main(capsys, "train", *TINY, f"--run-dir={tmp_path / 'run'}", *FOLDER,
                       f"--data.data_dir={_folder(tmp_path / 'f', readable=4)}")
    assert rc == 2 and "none of its 4 image files" in err and "DecompressionBomb" in err


def _bad_meta(key: str, value: str):
    def edit(t, meta):
        meta[key] = value
    return edit


SAMPLE_CASES = [  # (id, argv tail, substring)
    ("num-steps0", ["--num-steps", "0"], "--num-steps"),
    ("per-class0", ["--per-class", "0"], "--per-class"),
    ("temperature", ["--temperature", "-1"], "sample.temperature"),
    ("cfg", ["--cfg", "-1"], "sample.cfg"),
    ("override-cfg", ["--sample.cfg=-3"], "sample.cfg"),
    ("override-schedule", ["--sample.cfg_schedule=cosine"], "sample.cfg_schedule"),
    ("override-model", ["--model.dim=64"], "only --sample.* overrides"),
    ("classes", ["--classes", "0,12"], "--classes"),
    ("cuda", ["--device", "cuda"], "--device"),
    ("bad-device", ["--device", "tpu9"], "--device"),
]


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_bad_sample_inputs_fail_in_one_line(tmp_path, capsys, trained_run, case):
    name, tail, needle = case
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "x.png"
    rc, err = run_main(capsys, "sample", str(trained_run), "--out", str(out), *tail)
    assert rc == 2 and "Traceback" not in err and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("key,value,needle", [("step", "abc", "'step'"), ("config", "{not json", "'config'"),
                                              ("config", '{"model": null}', "embedded run config")])
def test_checkpoint_with_bad_metadata_fails_in_one_line(tmp_path, capsys, trained_run, key, value, needle):
    bad = poisoned_copy(trained_run, tmp_path / "bad.safetensors", _bad_meta(key, value))
    rc, err = run_main(capsys, "sample", str(bad), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "Traceback" not in err and needle in err, err


def test_checkpoint_missing_an_optimizer_entry_is_refused(tmp_path, capsys, trained_run):
    def drop(t, meta):
        del t[next(k for k in t if k.startswith("optim.") and k.endswith("exp_avg"))]

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    poisoned_copy(trained_run, run / "checkpoints" / "last.safetensors", drop)
    rc, err = run_main(capsys, "train", *TINY, f"--run-dir={run}", "--train.steps=3")
    assert rc == 2 and "optimizer state is incomplete" in err, err


def test_sample_applies_sample_overrides(tmp_path, capsys, trained_run):
    """--sample.* overrides are applied (not dropped): they change the image; explicit options win."""
    paths = {n: tmp_path / f"{n}.png" for n in ("base", "cfg", "flag")}
    assert main(["sample", str(trained_run), "--out", str(paths["base"]), "--per-class=1", "--classes=0,1"]) == 0
    assert main(["sample", str(trained_run), "--out", str(paths["cfg"]), "--per-class=1", "--classes=0,1",
                 "--sample.cfg=6", "--sample.seed=3"]) == 0
    assert main(["sample", str(trained_run), "--out", str(paths["flag"]), "--per-class=1", "--classes=0,1",
                 "--sample.cfg=1", "--cfg=6", "--seed=3"]) == 0
    assert paths["cfg"].read_bytes() != paths["base"].read_bytes()
    assert paths["cfg"].read_bytes() == paths["flag"].read_bytes()


EVAL_CASES = [
    ("kid-subsets0", lambda d, run: ["--checkpoint", str(run), "--kid-subsets", "0"], "--kid-subsets"),
    ("num-samples0", lambda d, run: ["--checkpoint", str(run), "--num-samples", "0"], "--num-samples"),
    ("override-model", lambda d, run: ["--checkpoint", str(run), "--model.x=y"], "only --sample.* overrides"),
    ("override-cfg", lambda d, run: ["--checkpoint", str(run), "--sample.cfg=-1"], "sample.cfg"),
    ("one-readable", lambda d, run: ["--images", _folder(d / "im", readable=1, bad=1)], "1 readable image(s) of 2"),
    ("images-missing", lambda d, run: ["--images", str(d / "none")], "neither a .npz file nor a folder"),
    ("cuda", lambda d, run: ["--checkpoint", str(run), "--device", "cuda"], "--device"),
]


@pytest.mark.parametrize("case", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_bad_eval_inputs_fail_in_one_line(tmp_path, capsys, trained_run, case):
    name, build, needle = case
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "m.json"
    rc, err = run_main(capsys, "eval", *build(tmp_path, trained_run), "--out", str(out), "--quiet")
    assert rc == 2 and "Traceback" not in err and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["presets", "--model.dim=3"], "only with --show"),
    (["presets", "--show", "nestar-tiny", "--model.dim=33"], "model.head_dim"),
    (["train-tokenizer", "--out", "X", "--train.lr=-1"], "train.lr"),
])
def test_other_commands_reject_or_validate_overrides(tmp_path, capsys, argv, needle):
    rc, err = run_main(capsys, *[str(tmp_path / a) if a == "X" else a for a in argv])
    assert rc == 2 and "Traceback" not in err and needle in err, err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="train.lr"):
        main(["--debug", "train", *TINY, f"--run-dir={tmp_path}", "--train.lr=-1"])


def test_api_level_checks(tmp_path):
    """The same checks hold for library users: data errors and sampling values."""
    with pytest.raises(DataError, match="not a directory"):
        from nestar.data import ImageFolderDataset

        (tmp_path / "f").write_text("x")
        ImageFolderDataset(tmp_path / "f", 32, 1)
    from nestar.config import ConfigError
    from nestar.pipeline import Pipeline
    from nestar.registry import build_model
    from nestar.tokenizers import build_tokenizer

    cfg = get_preset("nestar-tiny")
    pipe = Pipeline(build_model(cfg), build_tokenizer(cfg.tokenizer, 32, 1), cfg)
    for bad in (dict(num_steps=0), dict(temperature=-1.0), dict(cfg_schedule="cosine")):
        with pytest.raises(ConfigError):
            pipe([0], **bad)
    with pytest.raises(ConfigError, match=r"\[0, 10\)"):
        pipe([10])
