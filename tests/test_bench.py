"""Speed harness: `nestar bench speed --quick` on tiny presets writes the table, CSV, PNG and JSON."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from nestar.bench.speed import SpeedOptions, _HeadCounter, default_presets, markdown_table


def _run_cli(argv: list[str]) -> int:
    # the parser and command function of `nestar` (main() adds only error formatting)
    from nestar.cli.main import build_parser

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.overrides = extra
    return int(args.func(args) or 0)


def test_bench_speed_quick_writes_table_csv_png(tmp_path, capsys):
    out = tmp_path / "speed"
    rc = _run_cli(["bench", "speed", "--quick", "--presets", "nestar-tiny,arinar-tiny,nosuch-tiny", "--grids", "8,16",
                   "--repeats", "1", "--threads", "1", "--batch-throughput", "4", "--out", str(out)])
    assert rc == 0
    for name in ("speed.md", "speed.csv", "growth.csv", "speed.png", "speed.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "speed.csv").open()))
    assert [r["preset"] for r in rows] == ["nestar-tiny", "arinar-tiny"]
    by = {r["preset"]: r for r in rows}
    assert int(by["nestar-tiny"]["seq_steps"]) == 10 and int(by["arinar-tiny"]["seq_steps"]) == 8
    assert int(by["arinar-tiny"]["head_nfe_per_token"]) == 16  # one inner step per channel (4x4 patches)
    assert int(by["arinar-tiny"]["head_nfe_seq"]) == 8 * 16
    assert int(by["nestar-tiny"]["head_nfe_seq"]) == 10 * 4  # 10 steps x 4 Euler steps
    for r in rows:
        assert float(r["latency_ms"]) > 0 and float(r["throughput_img_s"]) > 0 and float(r["gflops_per_img"]) > 0
        assert float(r["params_M"]) > 0
    assert float(by["nestar-tiny"]["latency_vs_nestar"]) == pytest.approx(1.0)
    assert float(by["arinar-tiny"]["steps_vs_nestar"]) == pytest.approx(0.8)
    growth = list(csv.DictReader((out / "growth.csv").open()))
    assert {(g["preset"], g["grid"]) for g in growth} == {(p, s) for p in ("nestar-tiny", "arinar-tiny") for s in ("8", "16")}
    assert {g["seq_steps"] for g in growth if g["preset"] == "nestar-tiny"} == {"10", "13"}
    md = (out / "speed.md").read_text()
    assert "| nestar-tiny |" in md and "Ratios vs NestAR" in md and "nosuch-tiny: not registered" in md
    from PIL import Image

    with Image.open(out / "speed.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    data = json.loads((out / "speed.json").read_text())
    assert data["env"]["threads"] == 1 and data["env"]["quick"] is True
    assert data["env"]["machine"]["threads"] == 1 and data["env"]["machine"]["peak_gflops"]["float32"] > 0
    assert "achieved GFLOP/s" in md and all(float(r["achieved_gflops_s"]) > 0 for r in rows)
    assert "nestar-tiny" in capsys.readouterr().out


def test_default_presets_are_each_familys_matched_preset():
    from nestar.models import MODEL_SPECS
    from nestar.registry import PRESETS

    assert default_presets(quick=False) == [f"{name}-s" for name in MODEL_SPECS]
    assert default_presets(quick=True) == [f"{name}-tiny" for name in MODEL_SPECS]
    assert all(n in PRESETS for n in default_presets(False) + default_presets(True))


def test_head_counter_counts_and_restores():
    from nestar.registry import build_model, get_preset

    model = build_model(get_preset("arinar-tiny")).eval()
    with _HeadCounter(model) as hc:
        model.sample(torch.tensor([1]), guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert hc.calls == 8 and hc.seq_nfe == 8 * 16 and hc.token_nfe == 64 * 16 * 2
    assert "sample" not in model.head.__dict__


def test_options_quick_defaults_and_table():
    o = SpeedOptions(quick=True).resolved()
    assert (o.repeats, o.warmup, o.batch_throughput) == (2, 1, 8)
    o = SpeedOptions().resolved()
    assert (o.repeats, o.batch_throughput, o.grids) == (5, 64, (8, 16, 32))
    with pytest.raises(ValueError, match="dtype"):
        SpeedOptions(dtype="int8").resolved()
    t = markdown_table([{"a": 1.23456, "b": None}], [("a", "A", "{:.2f}"), ("b", "B", "{}")])
    assert "| 1.23 | - |" in t


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:only .* samples for 128-d features")  # N=40 on purpose: a smoke test
def test_bench_quality_quick_trains_evaluates_and_caches(tmp_path, capsys):
    """Tiny presets through the whole quality harness: train, sample, evaluate, report, then a cached rerun."""
    out, runs = tmp_path / "quality", tmp_path / "runs"
    argv = ["bench", "quality", "--quick", "--quiet", "--suite", "models,ablations", "--only", "nestar,raster,nestar-zorder",
            "--num-eval", "40", "--kid-subset-size", "20", "--out", str(out), "--runs-dir", str(runs),
            "--train.steps=6", "--train.ckpt_every=6"]
    assert _run_cli(argv) == 0
    res = json.loads((out / "quality.json").read_text())
    by = {r["name"]: r for r in res["rows"]}
    assert list(by) == ["real (train split)", "nestar", "raster", "nestar-zorder"]
    assert by["nestar"]["sequential_steps"] == 10 and by["raster"]["sequential_steps"] == 64
    assert by["nestar-zorder"]["group"] == "order: lattice vs zorder"
    for name in ("nestar", "raster", "nestar-zorder"):
        r = by[name]
        assert r["train_steps"] == 6 and r["num_eval"] == 40 and r["grid"] == f"grids/{name}.png"
        assert (out / r["grid"]).is_file()
        assert 0 <= r["metrics"]["precision"] <= 1 and 0 <= r["metrics"]["class_agreement"] <= 1
        # an untrained tiny model is far from real images; real train images are not
        assert r["metrics"]["fid"] > 5 * by["real (train split)"]["metrics"]["fid"]
    assert by["real (train split)"]["metrics"]["class_agreement"] > 0.8
    md = (out / "quality.md").read_text()
    assert "| nestar |" in md and "Ablation, order: lattice vs zorder" in md and "model.order=zorder" in md
    assert (out / "models.png").is_file() and (out / "ablations.png").is_file()
    assert Image.open(out / "tradeoffs.png").size == (1000, 420)

    capsys.readouterr()
    assert _run_cli(argv) == 0  # finished entries come from the cache: same figures, no retraining
    assert "nestar: cached" in capsys.readouterr().out
    res2 = json.loads((out / "quality.json").read_text())
    assert [r["metrics"]["fid"] for r in res2["rows"]] == [r["metrics"]["fid"] for r in res["rows"]]

    # a narrower invocation into the same folder says which rows its report drops and how to rebuild
    assert _run_cli(argv[:7] + ["nestar"] + argv[8:]) == 0
    printed = capsys.readouterr().out
    assert "no longer summarises nestar-zorder, raster" in printed
    assert "--cached-only --only nestar,nestar-zorder,raster" in printed
    assert _run_cli(argv + ["--cached-only"]) == 0
    assert [r["name"] for r in json.loads((out / "quality.json").read_text())["rows"]] == list(by)

    with pytest.raises(ValueError, match="unknown entries"):
        _run_cli(argv[:7] + ["nosuch"] + argv[8:])


def test_grid_file_finds_grids_of_rows_cached_on_another_machine(tmp_path):
    """Committed rows may hold another machine's absolute path: the grid is found by name under out."""
    from nestar.bench.quality import grid_file, montage

    (tmp_path / "grids").mkdir()
    Image.new("RGB", (10, 12)).save(tmp_path / "grids" / "a.png")
    rows = [
        {"name": "a", "grid": "/elsewhere/results/grids/a.png", "metrics": {"fid": 1.0}},
        {"name": "b", "grid": "grids/a.png", "metrics": {"fid": 2.0}},
        {"name": "c", "grid": "grids/missing.png", "metrics": {"fid": 3.0}},
    ]
    assert [grid_file(r, tmp_path) for r in rows] == [tmp_path / "grids" / "a.png"] * 2 + [None]
    assert montage(rows, tmp_path / "m.png") == tmp_path / "m.png"
    assert Image.open(tmp_path / "m.png").width == 2 * 10 + 3 * 8  # two tiles, three paddings


def test_sweep_finds_the_trained_model_of_a_row_cached_on_another_machine(tmp_path):
    """A cached row's recorded run_dir may be another machine's: the sweep looks under --runs-dir by
    the row's slug, and stops with both paths named rather than sampling some other model."""
    from nestar.bench.quality import _trained_run_dir

    row = {"run_dir": "/elsewhere/runs/nestar-seed1"}
    with pytest.raises(FileNotFoundError, match=r"/elsewhere/runs/nestar-seed1.*--runs-dir"):
        _trained_run_dir(row, tmp_path, "nestar-seed1")
    (tmp_path / "nestar-seed1" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):  # a run folder with no finished checkpoint is not a model
        _trained_run_dir(row, tmp_path, "nestar-seed1")
    (tmp_path / "nestar-seed1" / "checkpoints" / "last.safetensors").write_bytes(b"")
    assert _trained_run_dir(row, tmp_path, "nestar-seed1") == tmp_path / "nestar-seed1"
    assert _trained_run_dir({"run_dir": str(tmp_path / "nestar-seed1")}, "/nowhere", "x") == tmp_path / "nestar-seed1"


@pytest.mark.filterwarnings("ignore:only .* samples for 128-d features")
def test_bench_quality_train_seeds_give_mean_and_std_and_a_guidance_sweep(tmp_path, capsys):
    """Two training seeds of one entry: two runs, per-seed rows, and a summary whose std is real.
    --guidance-sweep: each seed is also scored at every scale (its own scale reused from the main
    row), each point cached in its own file, summarised per seed and tabulated."""
    out, runs = tmp_path / "quality", tmp_path / "runs"
    argv = ["bench", "quality", "--quick", "--quiet", "--only", "nestar", "--train-seeds", "0,1", "--num-eval", "20",
            "--kid-subset-size", "10", "--out", str(out), "--runs-dir", str(runs), "--train.steps=3", "--train.ckpt_every=3",
            "--guidance-sweep", "1,2"]
    assert _run_cli(argv) == 0
    res = json.loads((out / "quality.json").read_text())
    rows = [r for r in res["rows"] if r["name"] == "nestar"]
    assert [r["train_seed"] for r in rows] == [0, 1] and [r["sampling"]["seed"] for r in rows] == [0, 1]
    assert (runs / "nestar").is_dir() and (runs / "nestar-seed1").is_dir()
    s = res["summary"]["nestar"]
    fids = [r["metrics"]["fid"] for r in rows]
    assert fids[0] != fids[1] and s["mean"]["fid"] == pytest.approx(sum(fids) / 2)
    assert s["std"]["fid"] == pytest.approx(abs(fids[0] - fids[1]) / 2 ** 0.5)
    assert rows[0]["metrics"]["seam"] > 0  # pixel-patch tokens: the seam statistic is reported
    for r in rows:  # nestar-tiny samples at guidance 2: that point is the main row
        assert [p["guidance"] for p in r["guidance_sweep"]] == [1.0, 2.0]
        assert r["guidance_sweep"][1]["metrics"] == r["metrics"]
        assert r["guidance_sweep"][0]["metrics"]["fid"] != r["metrics"]["fid"]
    assert sorted(p.name for p in (out / "entries").glob("*-cfg*")) == ["nestar-cfg1.json", "nestar-seed1-cfg1.json"]
    assert len(s["sweeps"]) == 2 and set(s["sweeps"][0][0]) == {"guidance", "fid", "precision", "recall"}
    assert s["sweep_seeds"] == [0, 1]
    # where and how each figure was made: 'auto' precision resolves per CPU
    assert rows[0]["train_precision"] in ("fp32", "bf16") and rows[0]["machine"]["cpu"]
    assert rows[0]["guidance_sweep"][0]["sample_precision"] == rows[0]["sample_precision"]
    assert "| nestar | 1 | 2 |" in (out / "quality.md").read_text()
    capsys.readouterr()
    assert _run_cli(argv) == 0
    assert "guidance 1" not in capsys.readouterr().out  # every point came from the cache
    # --cached-only: a third seed is reported as missing, nothing is trained or sampled
    more = [a if a != "0,1" else "0,1,2" for a in argv] + ["--guidance-sweep", "1,2,3", "--cached-only"]
    assert _run_cli(more) == 0
    out_text = capsys.readouterr().out
    assert "nestar (train seed 2): not cached, left out" in out_text and "guidance 3 not cached" in out_text
    assert not (runs / "nestar-seed2").exists()
    res3 = json.loads((out / "quality.json").read_text())
    assert [r.get("train_seed") for r in res3["rows"] if r["name"] == "nestar"] == [0, 1]


def test_reconstruction_floor_scores_the_tokenizers_round_trip_of_the_real_rows_images(tmp_path, fmnist_arrays):
    """Latent track: the floor row decodes the tokenizer's encoding of the same train images the real
    row scores; pixel patches reconstruct exactly, a (random) VAE does not."""
    from nestar.bench.quality import _real_images, reconstruction_floor
    from nestar.registry import get_preset
    from nestar.tokenizers import TokenizerConfig, build_tokenizer
    from nestar.tokenizers.kl_vae import KLAutoencoder, save_kl_dir, small_vae_config

    class Scorer:  # stands in for the classifier evaluator: records what it is asked to score
        data_cfg = get_preset("nestar-fmnist").data

        def __call__(self, images, labels, kid_subset_size, seam_patch_size=None):
            self.images, self.labels = images, labels
            return {"fid": float(images.mean())}, 0.0

    scorer = Scorer()
    real, labels = _real_images(scorer.data_cfg, 6, seed=3)
    row = reconstruction_floor(scorer, TokenizerConfig(name="patch", patch_size=4), 6, 3, 2)
    assert row["name"] == "reconstructions (patch)" and row["num_eval"] == 6
    assert torch.equal(scorer.images, real) and torch.equal(scorer.labels, labels)
    torch.manual_seed(0)
    vae = KLAutoencoder(small_vae_config(channels=1, z_channels=4, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1))
    save_kl_dir(tmp_path / "vae", vae, image_size=32, latent_scale=0.5, latent_shift=0.0)
    kl = TokenizerConfig(name="kl", path=str(tmp_path / "vae"))
    reconstruction_floor(scorer, kl, 6, 3, 2)
    tok = build_tokenizer(kl, 32, 1)
    with torch.no_grad():
        expected = tok.decode(tok.encode(real)).clamp(-1, 1)
    torch.testing.assert_close(scorer.images, expected)
    assert (scorer.images - real).abs().mean() > 0.05


@pytest.mark.filterwarnings("ignore:only .* samples for 128-d features")
def test_bench_nfe_scores_each_solver_setting_caches_it_and_reports_the_whole_sweep(tiny_cfg, fmnist_small, tmp_path,
                                                                                   capsys):
    """`bench nfe`: one row per (solver, grid, steps) with the NFE it spends (Heun s steps = 2s-1),
    cached; a later command adding settings reports the earlier ones too, in NFE order."""
    from nestar.training import Trainer

    Trainer(tiny_cfg, tmp_path / "run", progress=False, dataset=fmnist_small).fit()
    out = tmp_path / "nfe"
    base = ["bench", "nfe", "--run", f"tiny={tmp_path / 'run'}", "--num-eval", "20", "--out", str(out), "--quiet"]
    assert _run_cli(base + ["--nfe", "3", "--solvers", "euler,heun", "--grids", "uniform"]) == 0
    res = json.loads((out / "nfe.json").read_text())
    assert [(r["solver"], r["steps"], r["nfe"]) for r in res["rows"]] == [("euler", 3, 3), ("heun", 2, 3)]
    assert res["rows"][0]["metrics"]["fid"] != res["rows"][1]["metrics"]["fid"]
    capsys.readouterr()
    assert _run_cli(base + ["--nfe", "5", "--solvers", "euler", "--grids", "data"]) == 0
    assert capsys.readouterr().out.count("cached") == 0  # a new setting: sampled
    rows = json.loads((out / "nfe.json").read_text())["rows"]
    assert [(r["solver"], r["grid"], r["nfe"]) for r in rows] == [("euler", "data", 5), ("euler", "uniform", 3),
                                                                  ("heun", "uniform", 3)]
    assert "| euler | data | 5 | 5 |" in (out / "nfe.md").read_text()
    assert _run_cli(base + ["--nfe", "3", "--solvers", "heun", "--grids", "uniform"]) == 0
    assert "heun-uniform-2: cached" in capsys.readouterr().out


def test_report_names_the_entries_a_narrower_invocation_drops(tmp_path):
    from nestar.bench.quality import entries_dropped

    result = {"rows": [{"name": "real (train split)"}, {"name": "nestar", "train_seed": 0}]}
    assert entries_dropped(result, tmp_path) == []  # no report yet
    (tmp_path / "quality.json").write_text("{not json")
    assert entries_dropped(result, tmp_path) == []
    before = {"summary": {"real (train split)": {}, "nestar": {}, "raster": {}, "mar": {}}}
    (tmp_path / "quality.json").write_text(json.dumps(before))
    assert entries_dropped(result, tmp_path) == ["mar", "raster"]
