"""The README.md model card written next to model.safetensors + config.json by `Pipeline.save_pretrained`.

Hugging Face Hub reads its YAML front matter (library_name, tags, datasets); the body says what
the model is (preset, parameters, sequential steps), how it samples by default, what it was
measured at (when the run measured anything) and how to load it. No huggingface_hub needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

# Files a run directory (or a saved model) may hold measurements in, and the keys worth a card row.
_DEMO_KEYS = (
    "class_agreement",
    "classifier_test_accuracy",
    "num_eval_samples",
    "ms_per_image_batch64",
    "sequential_steps",
    "train_steps",
)
_EVAL_KEYS = (
    "fid",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "class_agreement",
    "inception_score",
)
_HF_DATASETS = {"fashion_mnist": "zalando-datasets/fashion_mnist"}


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def collect_metrics(directory: Optional[Path]) -> dict[str, Any]:
    """Measurements found in a run directory or saved model: `nestar demo`'s demo_results.json and a
    `nestar eval` / save_pretrained metrics.json. Empty if there are none."""
    if directory is None:
        return {}
    directory = Path(directory)
    if directory.is_file():  # a checkpoint file: its run directory is two levels up
        directory = (
            directory.parent.parent if directory.parent.name == "checkpoints" else directory.parent
        )
    found: dict[str, Any] = {}
    demo = _read_json(directory / "demo_results.json")
    if demo:
        found.update({f"demo.{k}": demo[k] for k in _DEMO_KEYS if demo.get(k) is not None})
    saved = _read_json(directory / "metrics.json")
    if saved:
        inner = (
            saved.get("metrics") if isinstance(saved.get("metrics"), dict) else saved
        )  # eval's layout or ours
        keys = _EVAL_KEYS if inner is not saved else list(inner)
        prefix = "eval." if inner is not saved else ""
        found.update(
            {f"{prefix}{k}": inner[k] for k in keys if isinstance(inner.get(k), (int, float, str))}
        )
        if inner is not saved and saved.get("num_samples"):
            found["eval.num_samples"] = saved["num_samples"]
    return found


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _front_matter(cfg) -> str:
    tags = ["nestar", "image-generation", "class-conditional", "autoregressive", cfg.model_type]
    lines = ["---", "library_name: nestar", "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)]
    if cfg.data.name in _HF_DATASETS:
        lines += ["datasets:", f"- {_HF_DATASETS[cfg.data.name]}"]
    return "\n".join(lines + ["---", ""])


def _tokenizer_text(tok) -> str:
    return (
        f"{tok.name}, {tok.patch_size}x{tok.patch_size} pixels" if tok.name == "patch" else tok.name
    )


def _tokenizer_note(cfg) -> list[str]:
    if cfg.tokenizer.name == "patch":
        return []  # pixel patches: nothing beyond these files is needed
    return [
        "",
        f"The `{cfg.tokenizer.name}` tokenizer (a VAE) is not in this repository: loading needs its "
        f"weights at `tokenizer.path` ({cfg.tokenizer.path or 'its default path'}).",
    ]


def model_card(
    cfg,
    num_params: int,
    sequential_steps: int,
    metrics: Optional[dict] = None,
    repo_id: Optional[str] = None,
) -> str:
    """Markdown model card (with Hub YAML metadata) for a RunConfig `cfg`."""
    name = cfg.preset or f"{cfg.model_type} model"
    s, t, d = cfg.sample, cfg.train, cfg.data
    where = repo_id or "path/to/this/folder"
    model_rows = [
        ("model type", cfg.model_type),
        ("preset", cfg.preset or "(custom config)"),
        ("parameters", f"{num_params / 1e6:.2f}M"),
        ("sequential steps per image", sequential_steps),
        (
            "data",
            f"{d.name}, {d.image_size}x{d.image_size}, {d.channels} channel(s), "
            f"{d.num_classes} classes",
        ),
        ("tokenizer", _tokenizer_text(cfg.tokenizer)),
    ]
    for key in ("k", "order", "dim", "depth"):
        if hasattr(cfg.model, key):
            model_rows.append((f"model.{key}", getattr(cfg.model, key)))
    sample_rows = [
        ("guidance scale (cfg)", s.cfg),
        ("guidance schedule", s.cfg_schedule),
        ("temperature", s.temperature),
        ("flow-head steps", s.num_steps),
        ("seed", s.seed),
        ("precision", s.precision),
    ]
    train_rows = [
        ("steps", t.steps),
        ("batch size", t.batch_size),
        ("learning rate", t.lr),
        ("schedule", t.lr_schedule),
        ("EMA decay", t.ema_decay),
        ("precision", t.precision),
    ]

    def table(rows) -> list[str]:
        return ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]

    out = [
        _front_matter(cfg),
        f"# {name}",
        "",
        f"A class-conditional image generator ({cfg.model_type}) trained with nestar "
        "(`pip install nestar`). Files: `model.safetensors` (weights), `config.json` (the resolved run config), "
        "this card.",
        *_tokenizer_note(cfg),
        "",
        "## Model",
        "",
        *table(model_rows),
        "",
        "## Sampling settings (the defaults in config.json `sample`)",
        "",
        *table(sample_rows),
        "",
        "## Training",
        "",
        *table(train_rows),
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        out += ["| metric | value |", "|---|---|"] + [
            f"| {k} | {_fmt(v)} |" for k, v in metrics.items()
        ]
        out += [
            "",
            "`demo.*`: from `nestar demo` (class agreement under the dataset classifier); "
            "`eval.*`: from `nestar eval`.",
        ]
    else:
        out += ["Not measured when this card was written (run `nestar eval` on the model)."]
    out += [
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from nestar.pipeline import Pipeline",
        "",
        f'pipe = Pipeline.from_pretrained("{where}")',
        "out = pipe(torch.arange("
        + str(d.num_classes)
        + ").repeat_interleave(4))  # 4 samples per class",
        "images = out.images  # (B, C, H, W) in [-1, 1]",
        "```",
        "",
        "```bash",
        f"nestar sample {where} --out samples.png --strip strip.png",
        f"nestar serve {where}   # a local web page on http://127.0.0.1:8000/",
        "```",
        "",
    ]
    return "\n".join(out)


def write_model_card(
    directory: Path, pipe, metrics: Optional[dict] = None, repo_id: Optional[str] = None
) -> Path:
    """README.md (and metrics.json when there are metrics) in a save_pretrained `directory`."""
    from nestar.config import save_json

    directory = Path(directory)
    if metrics is None:
        metrics = collect_metrics(pipe.source)
    if metrics:
        save_json(metrics, directory / "metrics.json")
    card = model_card(
        pipe.config, pipe.model.num_params(), pipe.model.sequential_steps(), metrics, repo_id
    )
    (directory / "README.md").write_text(card)
    return directory / "README.md"
