"""The URLs the inference handler serves (novakit/asgi.py): the inference API only.

Resolving a completion's path against this short list instead of the whole
site's (portal, admin, management API) saves Django's resolver a walk
through every other pattern on each request. Its paths are the ones
`settings.INFERENCE_PATH_PREFIXES` sends to that handler; anything else
under them is a 404 in the API's error shape, as from the full URLconf.
"""

from django.urls import path

from novakit.api import api
from novakit.urls import handler400, handler404

urlpatterns = [
    path("api/v1/", api.urls),
]

__all__ = ["handler400", "handler404", "urlpatterns"]
