"""Write platform/catalog/models.json: seed.json's models plus OpenRouter's from genai-prices.

Run by hand when the shipped catalog should be brought up to date, never at run
time or install time (NovaKit does not depend on genai-prices to run):

    .venv/bin/pip install -e '.[catalog]'
    .venv/bin/python platform/catalog/generate.py
    git diff platform/catalog/models.json    # review, commit

Existing installs get models added to the shipped file only through a data
migration (see completions 0010) or `manage.py load_catalog`; the catalog sync
keeps prices and capabilities current from the live upstream after that.

The rules:

- seed.json is kept as it is: the public contract's models (ids, tiers and
  multipliers that tests and clients rely on) and the development model. Only
  the capability fields they lack are added, by the rules below.
- Every other model is one of genai-prices' OpenRouter models whose id is
  `vendor/model` (no `:free`, `:batch`, ... variant, no `~vendor/...-latest`
  alias whose model, and so price, moves, not OpenRouter's own routers),
  with an input and an output price, and a context window: its OpenRouter
  entry's, else the one genai-prices gives the vendor's own API for
  that model. A model with no known context window is left out rather than
  guessed, since usage is bounded by it. One a seed already routes to is left
  out too.
- Prices: the price in force today (USD per million tokens); for a tiered price,
  its base (first) tier. Rounded to the catalog's 4 decimals.
- Tier and multiplier: `billing.tiers.tier_for_price`, the rule the catalog sync
  applies to the models it adds (bands of completion price in
  `CATALOG_SYNC_TIER_BANDS`).
- genai-prices has no capabilities; until a catalog sync reads them from the
  upstream's listing they follow these rules:
  - reasoning: the id is one of REASONING (OpenAI's o-series and GPT-5 but its
    `-chat` models, DeepSeek R1 and its distillations, QwQ, `-thinking`
    models). A reasoning model refuses the sampling parameters and `max_tokens`
    (its budget is `max_completion_tokens`), so its `supported_parameters` is
    REASONING_PARAMETERS: what is known to be refused is left out, the rest
    assumed accepted.
  - any other model: `supported_parameters` empty, meaning not known: the
    gateway forwards what the client sent, as it did before the field existed.
  - vision: the id is one of VISION (families known to take images).
  - max_completion_tokens: not known (null).
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED_FILE = HERE / "seed.json"
OUTPUT_FILE = HERE / "models.json"

# OpenRouter's vendor prefix -> genai-prices' provider for the vendor's own API,
# where the two names differ (the rest are the same).
VENDOR_PROVIDERS = {"mistralai": "mistral", "z-ai": "zai", "meta-llama": "meta"}
SKIPPED_VENDORS = {"openrouter"}  # its routers (auto, ...) have no price of their own

REASONING = re.compile(
    r"^openai/(o1|o3|o4)(-|$)|^openai/gpt-5(?!.*-chat)|deepseek-r1|deepseek-reasoner|qwq|-thinking"
)
REASONING_PARAMETERS = [
    "include_reasoning", "max_completion_tokens", "reasoning", "response_format", "seed", "stop",
    "structured_outputs", "tool_choice", "tools",
]
VISION = re.compile(
    r"^openai/(gpt-4o(?!-audio)|gpt-4-turbo|gpt-4\.1|gpt-4\.5|gpt-5|o1(?!-mini|-preview)|o3(?!-mini)"
    r"|o4-mini)"
    r"|^anthropic/claude-(3|sonnet|opus|haiku)"
    r"|^google/(gemini|gemma-3)"
    r"|^x-ai/grok-(4|2-vision)"
    r"|^meta-llama/llama-(4|3\.2-\d+b-vision)"
    r"|vision|-vl\b|pixtral|llava|-omni|mistral-(small-3\.[12]|medium-3)|^amazon/nova-(lite|pro)"
)
QUANTUM = Decimal("0.0001")


def _setup_django() -> None:
    """Only to read the tier rule from the project's settings; no database is used."""
    sys.path.append(str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")


def _usd(price: Any) -> Decimal | None:
    if price is None:
        return None
    base = getattr(price, "base", price)  # TieredPrices: the first tier's price
    return Decimal(base).quantize(QUANTUM)


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def capabilities(model_id: str) -> dict[str, Any]:
    reasoning = bool(REASONING.search(model_id))
    return {
        "supported_parameters": REASONING_PARAMETERS if reasoning else [],
        "reasoning": reasoning,
        "max_completion_tokens": None,
    }


def _vendor_model(providers: dict[str, Any], model_id: str) -> Any:
    vendor, name = model_id.split("/", 1)
    provider = providers.get(VENDOR_PROVIDERS.get(vendor, vendor))
    if provider is None:
        return None
    return provider.find_model(name, all_providers=list(providers.values()))


def _name(model_id: str) -> str:
    return model_id.split("/", 1)[1].replace("-", " ").title()


def generated_models(*, seeds: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    from genai_prices.data import providers as all_providers

    from billing.tiers import tier_for_price

    providers = {provider.id: provider for provider in all_providers}
    taken = {seed["id"] for seed in seeds} | {
        upstream for seed in seeds for _, upstream in seed["routes"]
    }
    models = []
    for info in providers["openrouter"].models:
        model_id = info.id
        if "/" not in model_id or ":" in model_id or model_id.startswith("~") or model_id in taken:
            continue
        vendor = model_id.split("/", 1)[0]
        if vendor in SKIPPED_VENDORS:
            continue
        prices = info.get_prices(now)
        prompt = _usd(getattr(prices, "input_mtok", None))
        completion = _usd(getattr(prices, "output_mtok", None))
        if prompt is None or completion is None:
            continue
        own = None if info.context_window and info.name else _vendor_model(providers, model_id)
        context = info.context_window or (own.context_window if own else None)
        if not context:
            continue
        tier, multiplier = tier_for_price(completion)
        models.append({
            "id": model_id,
            "name": info.name or (own.name if own and own.name else None) or _name(model_id),
            "owned_by": vendor,
            "tier": tier,
            "multiplier": str(multiplier),
            "context_length": context,
            "vision": bool(VISION.search(model_id)),
            "prompt_usd_per_m": _text(prompt),
            "completion_usd_per_m": _text(completion),
            "routes": [["openrouter", model_id]],
            **capabilities(model_id),
        })
        taken.add(model_id)
    return sorted(models, key=lambda model: model["id"])


def main() -> None:
    _setup_django()
    seed = json.loads(SEED_FILE.read_text())
    now = datetime.now(UTC)
    seeds = [{**model, **{k: v for k, v in capabilities(model["id"]).items() if k not in model}}
             for model in seed["models"]]
    models = seeds + generated_models(seeds=seed["models"], now=now)
    source = (f"genai-prices {version('genai-prices')}, OpenRouter prices in force on "
              f"{now.date().isoformat()}")
    lines = [
        "{",
        '  "_comment": ' + json.dumps(
            "Generated by platform/catalog/generate.py from seed.json and " + source
            + "; do not edit by hand: edit seed.json or the generator's rules, then regenerate. "
            "Prices are USD per million tokens. Loaded by the completions data migrations and "
            "`manage.py load_catalog`."
        ) + ",",
        '  "providers": [',
        ",\n".join("    " + json.dumps(provider) for provider in seed["providers"]),
        "  ],",
        '  "models": [',
        ",\n".join("    " + json.dumps(model, ensure_ascii=False) for model in models),
        "  ]",
        "}",
    ]
    OUTPUT_FILE.write_text("\n".join(lines) + "\n")
    print(f"{OUTPUT_FILE.relative_to(ROOT)}: {len(models)} models ({len(seeds)} from seed.json)")


if __name__ == "__main__":
    main()
