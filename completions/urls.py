from django.urls import path

from completions import usage_api

urlpatterns = [
    path("usage", usage_api.usage, name="usage"),
]
