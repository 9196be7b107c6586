"""Settings for a Celery worker subprocess started by the tests.

Same as production settings, plus a file-system broker when the run has no
Redis (the embedded default), so the worker tests run on any machine.
"""

from __future__ import annotations

import os

from novakit.settings import *  # noqa: F403

_folder = os.environ.get("TEST_BROKER_FOLDER")
if _folder:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": _folder,
        "data_folder_out": _folder,
        "processed_folder": _folder + "-processed",
        "control_folder": _folder + "-control",
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = f"file://{_folder}-results"
CELERY_TASK_ALWAYS_EAGER = False
IN_PROCESS_BEAT = False
