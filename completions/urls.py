from django.urls import path

from completions import usage_api

urlpatterns = [
    path("usage", usage_api.usage, name="usage"),
    path("generations/<str:generation_id>", usage_api.generation, name="generation"),
]
