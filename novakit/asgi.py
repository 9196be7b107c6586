"""ASGI entry point: the lifespan, the inference API's own handler, Django for the rest.

The runtime pieces live in novakit/runtime/ (its README says what each bought).
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

from completions import tokens

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")

# The tokenizer first, before Django and the apps load: building it frees its ~23 MB ranks
# dict (completions/tokens.py), and the modules imported afterwards fill that freed memory
# instead of growing the process: 144.7 -> 139.0 MB right after start-up (inference
# process); after a load, when requests have filled the holes too, ~1 MB (151 -> 150).
tokens.load()
django_application = get_asgi_application()

from novakit.runtime import lifespan  # noqa: E402  (after Django is set up)
from novakit.runtime.inference import InferenceHandler  # noqa: E402

inference_application = InferenceHandler()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await lifespan.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await lifespan.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    from django.conf import settings

    if (settings.INFERENCE_HANDLER and scope["type"] == "http"
            and scope["path"].startswith(settings.INFERENCE_PATH_PREFIXES)):
        await inference_application(scope, receive, send)
        return
    await django_application(scope, receive, send)
