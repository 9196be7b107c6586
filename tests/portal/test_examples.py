"""The portal's code examples name a model that answers on this deployment.

A fresh install has no provider key: every model but the built-in `novakit/echo`
answers 503 there, so an example naming one fails the first time it is tried.
"""

from __future__ import annotations

import html as html_module
import re

import pytest

from completions.catalog import catalog_cache
from completions.models import CatalogModel, ModelRoute, Provider
from completions.schemas import DEFAULT_MODEL

pytestmark = pytest.mark.django_db

# `"model": "x"` (JSON), `model: "x"` (JavaScript), `model="x"` (Python).
MODEL_IN_CODE = re.compile(r"""["']?model["']?\s*[:=]\s*["']([^"']+)["']""")


def models_in_examples(page: str) -> list[str]:
    blocks = re.findall(r"<pre[^>]*>(.*?)</pre>", page, re.S)
    return [model for block in blocks
            for model in MODEL_IN_CODE.findall(html_module.unescape(block))]


@pytest.fixture
def no_provider_key(settings) -> None:  # type: ignore[no-untyped-def]
    settings.OPENROUTER_API_KEY = ""
    catalog_cache.clear()


@pytest.fixture
def provider_key(settings) -> None:  # type: ignore[no-untyped-def]
    settings.OPENROUTER_API_KEY = "sk-or-test"
    catalog_cache.clear()


@pytest.mark.parametrize("path", ["/portal/", "/portal/reference/"])
def test_given_no_provider_key_then_every_example_names_the_echo_model_and_says_how_to_switch(
        owner, no_provider_key, path):
    page = owner.get(path).content.decode()

    models = models_in_examples(page)
    assert models and set(models) == {"novakit/echo"}, models
    note = re.search(r'data-testid="example-model-note"[^>]*>(.*?)</p>', page, re.S)
    assert note, "no line beside the examples says how to switch on real models"
    assert "OPENROUTER_API_KEY" in note.group(1)


def test_given_no_provider_key_then_the_signed_out_reference_names_the_echo_model_too(
        client, catalog, no_provider_key):
    page = client.get("/portal/reference/").content.decode()

    assert set(models_in_examples(page)) == {"novakit/echo"}


@pytest.mark.parametrize("path", ["/portal/", "/portal/reference/"])
def test_given_a_provider_key_then_the_examples_name_the_default_model_and_no_switch_note(
        owner, provider_key, path):
    page = owner.get(path).content.decode()

    assert set(models_in_examples(page)) == {DEFAULT_MODEL}
    assert 'data-testid="example-model-note"' not in page


def test_given_a_provider_for_another_model_only_then_the_examples_name_that_model(
        owner, no_provider_key):
    provider = Provider(slug="local", name="Local", kind=Provider.Kind.OPENAI,
                        base_url="https://llm.example.test/v1")
    provider.set_api_key("sk-local")
    provider.save()
    ModelRoute.objects.create(model=CatalogModel.objects.get(model_id="anthropic/claude-3-opus"),
                              provider=provider, upstream_model="claude-3-opus", priority=5)

    page = owner.get("/portal/reference/").content.decode()

    assert set(models_in_examples(page)) == {"anthropic/claude-3-opus"}
    assert 'data-testid="example-model-note"' not in page
