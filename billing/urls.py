from django.urls import path

from billing import api

urlpatterns = [
    path("credits", api.credits, name="credits"),
    path("credits/ledger", api.ledger, name="credits-ledger"),
]
