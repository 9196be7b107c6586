"""Which model the portal's code examples name: one that answers on this deployment.

A fresh install has no provider key, and every model but the built-in
`novakit/echo` answers 503 there; an example that fails the first time it is
pasted is worse than none. So the examples name the default model when a
provider serves it, else another model a provider serves, else the echo model,
with a line saying which setting switches the real models on.
"""

from __future__ import annotations

from dataclasses import dataclass

from completions.catalog import ModelInfo, load_snapshot
from completions.schemas import DEFAULT_MODEL

TIER_ORDER = {"basic": 0, "standard": 1, "powerful": 2}


@dataclass(frozen=True)
class ExampleModel:
    model_id: str
    tier: str
    is_development: bool
    # The setting that would make real models answer, when only development models do.
    missing_setting: str | None


def _missing_setting(snapshot: dict[str, ModelInfo]) -> str:
    """The setting the 503 names: the default model's first unconfigured route's."""
    models = [snapshot[DEFAULT_MODEL]] if DEFAULT_MODEL in snapshot else []
    models += sorted(snapshot.values(), key=lambda m: m.model_id)
    for model in models:
        for route in model.routes:
            if not route.configured:
                return route.missing_setting()
    return "a provider's API key"


def example_model() -> ExampleModel:
    snapshot = load_snapshot()
    default = snapshot.get(DEFAULT_MODEL)
    if default is not None and default.available:
        return ExampleModel(default.model_id, default.tier, False, None)
    answering = sorted((model for model in snapshot.values() if model.available),
                       key=lambda m: (m.is_development, TIER_ORDER.get(m.tier, 9), m.model_id))
    if answering and not answering[0].is_development:
        return ExampleModel(answering[0].model_id, answering[0].tier, False, None)
    if answering:
        return ExampleModel(answering[0].model_id, answering[0].tier, True,
                            _missing_setting(snapshot))
    # Nothing answers at all (echo switched off too): the default, and what it needs.
    return ExampleModel(DEFAULT_MODEL, default.tier if default else "basic", False,
                        _missing_setting(snapshot))
