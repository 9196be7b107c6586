"""uvicorn-worker's UvicornWorker configured as novakit.runtime.serve configures uvicorn, for a
fair comparison (bench/profile.py --server gunicorn): no access log, no websockets."""

from uvicorn_worker import UvicornWorker


class NovaKitLikeWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "access_log": False, "ws": "none",
                     "lifespan": "on"}
