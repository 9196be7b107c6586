from django.urls import path

from completions import usage_api
from novakit import inputs  # noqa: F401  (registers the text_id converter)

urlpatterns = [
    path("usage", usage_api.usage, name="usage"),
    path("generations/<text_id:generation_id>", usage_api.generation, name="generation"),
]
