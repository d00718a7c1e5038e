"""Hugging Face Hub layout: save_pretrained's model card, and from_pretrained("owner/repo") from a
local Hub cache that the test lays out itself, offline (HF_HUB_OFFLINE=1): nothing touches the network."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from nestar import hub
from nestar.model_card import collect_metrics
from nestar.pipeline import Pipeline
from nestar.registry import build_model, get_preset, resolve
from nestar.tokenizers import build_tokenizer
from nestar.serialization import CheckpointError

REVISION = "0123456789abcdef0123456789abcdef01234567"


def tiny_pipeline(seed: int = 0) -> Pipeline:
    torch.manual_seed(seed)
    cfg = resolve(get_preset("nestar-tiny"))
    cfg.sample.precision = "fp32"
    return Pipeline(build_model(cfg), build_tokenizer(cfg.tokenizer, 32, 1).eval(), cfg)


def hub_cache(root, repo_id: str, pipe: Pipeline):
    """A Hub cache as huggingface_hub lays it out: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    pipe.save_pretrained(repo / "snapshots" / REVISION, repo_id=repo_id)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, require):
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        require(False, "huggingface_hub is not installed (pip install 'nestar[hub]')")
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def sample(pipe: Pipeline) -> torch.Tensor:
    return pipe(torch.tensor([7, 8]), num_steps=2, generator=torch.Generator().manual_seed(1)).images


def test_repo_ids():
    assert hub.parse_repo_id("user/nestar-fmnist") == ("user/nestar-fmnist", None)
    assert hub.parse_repo_id("user/repo@v1.0") == ("user/repo", "v1.0")
    for not_an_id in ("nestar-fmnist", "/abs/path", "./runs/x", "a/b/c", "../x", "user/..", "runs\\x", ""):
        assert hub.parse_repo_id(not_an_id) is None, not_an_id


def test_save_pretrained_writes_the_hub_layout_and_a_model_card(tmp_path):
    pipe = tiny_pipeline()
    out = pipe.save_pretrained(tmp_path / "m", metrics={"demo.class_agreement": 0.888}, repo_id="me/tiny")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md", "metrics.json"}
    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: nestar" in front and "- nestar" in front and "zalando-datasets/fashion_mnist" in front
    for text in ("# nestar-tiny", "| sequential steps per image | 10 |", "| guidance scale (cfg) | 2 |",
                 "| flow-head steps | 4 |", "| demo.class_agreement | 0.888 |", 'Pipeline.from_pretrained("me/tiny")',
                 f"| parameters | {pipe.model.num_params() / 1e6:.2f}M |"):
        assert text in card, text
    assert json.loads((out / "metrics.json").read_text()) == {"demo.class_agreement": 0.888}
    assert torch.equal(sample(Pipeline.from_pretrained(out)), sample(pipe))
    try:  # the card's metadata as the Hub reads it
        from huggingface_hub import ModelCard
    except ImportError:
        return
    data = ModelCard.load(out / "README.md").data
    assert data.library_name == "nestar" and "class-conditional" in data.tags


def test_card_metrics_come_from_the_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.safetensors").write_bytes(b"")
    (run / "demo_results.json").write_text(json.dumps({"class_agreement": 0.9, "sequential_steps": 10, "cpu": "x"}))
    (run / "metrics.json").write_text(json.dumps({"metrics": {"fid": 12.5, "recall": 0.5}, "num_samples": 500}))
    found = collect_metrics(run / "checkpoints" / "last.safetensors")
    assert found == {"demo.class_agreement": 0.9, "demo.sequential_steps": 10, "eval.fid": 12.5,
                     "eval.recall": 0.5, "eval.num_samples": 500}
    pipe = tiny_pipeline()
    pipe.source = run
    card = (pipe.save_pretrained(tmp_path / "m") / "README.md").read_text()
    assert "| eval.fid | 12.5 |" in card
    assert "Not measured" in (tiny_pipeline().save_pretrained(tmp_path / "m2") / "README.md").read_text()


def test_from_pretrained_repo_id_offline_from_the_cache(offline_cache):
    pipe = tiny_pipeline()
    hub_cache(offline_cache, "someone/nestar-tiny", pipe)
    loaded = Pipeline.from_pretrained("someone/nestar-tiny")
    assert loaded.config.preset == "nestar-tiny"
    assert torch.equal(sample(loaded), sample(pipe))
    assert torch.equal(sample(Pipeline.from_pretrained(f"someone/nestar-tiny@{REVISION}")), sample(pipe))


def test_missing_repo_offline_is_one_clear_line(offline_cache):
    with pytest.raises(CheckpointError) as e:
        Pipeline.from_pretrained("someone/not-cached")
    msg = str(e.value)
    assert "someone/not-cached is not in the local cache" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download someone/not-cached" in msg and "\n" not in msg


def test_a_local_path_wins_over_the_hub(offline_cache, tmp_path, monkeypatch):
    hub_cache(offline_cache, "someone/model", tiny_pipeline(seed=0))
    local = tiny_pipeline(seed=1)
    monkeypatch.chdir(tmp_path)
    local.save_pretrained(tmp_path / "someone" / "model")
    assert torch.equal(sample(Pipeline.from_pretrained("someone/model")), sample(local))


def test_cli_sample_from_a_repo_id(offline_cache, tmp_path):
    from nestar.cli.main import main

    hub_cache(offline_cache, "someone/nestar-tiny", tiny_pipeline())
    out = tmp_path / "s.png"
    assert main(["sample", "someone/nestar-tiny", "--out", str(out), "--per-class", "1", "--num-steps", "2"]) == 0
    assert out.is_file()


def test_repo_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(CheckpointError, match=r"no local path 'someone/x'.*pip install 'nestar\[hub\]'"):
        Pipeline.from_pretrained("someone/x")
