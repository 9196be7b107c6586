"""A settings module every worker fails to load at the same moment (tests/platform/test_serve.py).

Each worker that imports it leaves its pid in `FAIL_TOGETHER_DIR` and waits
until `FAIL_TOGETHER_WORKERS` have, then refuses to load: the workers exit
with gunicorn's boot error together, so the server reaps the second while it
is still stopping for the first.
"""

import os
import time
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_here = Path(os.environ["FAIL_TOGETHER_DIR"])
(_here / str(os.getpid())).touch()
_deadline = time.monotonic() + 60
while len(list(_here.iterdir())) < int(os.environ["FAIL_TOGETHER_WORKERS"]):
    if time.monotonic() > _deadline:
        break
    time.sleep(0.01)
raise ImproperlyConfigured("these settings refuse to load, in every worker at once")
