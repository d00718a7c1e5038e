"""The model-family registry (torchtitan's TrainSpec, for generators): one ModelSpec per family.

Each family module registers its spec once, at import (`nestar.models` imports them all); the run
configs, benches, CLI help, distributed code and tests iterate over `MODEL_SPECS` instead of
naming the families again. To add a family: a module with a `TokenModelConfig` subclass and a
`GenerativeModel` subclass, a `register_model(ModelSpec(...))` line at its end, its import in
`nestar/models/__init__.py` and its presets in `nestar/registry.py` (docs/design.md, "Code layout").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nestar.models.base import GenerativeModel, TokenModelConfig


@dataclass(frozen=True)
class ModelSpec:
    """A model family: `name` (the run config's `model_type`), its config and model classes, and the
    names of its presets by role: 'tiny' (tests, quick benches; every family has one), 's' (the
    matched small models of the speed bench), 'fmnist' (the matched models of the quality bench)."""

    name: str
    config_cls: type[TokenModelConfig]
    model_cls: type[GenerativeModel]
    description: str
    presets: dict[str, str] = field(default_factory=dict)

    def build(self, config: TokenModelConfig) -> GenerativeModel:
        return self.model_cls(config)


MODEL_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add `spec` to MODEL_SPECS; a name can be registered once."""
    if spec.name in MODEL_SPECS:
        raise ValueError(f"model family {spec.name!r} is already registered")
    if "tiny" not in spec.presets:
        raise ValueError(
            f"model family {spec.name!r} needs a 'tiny' preset (the contract tests build it)"
        )
    MODEL_SPECS[spec.name] = spec
    return spec
