"""NovaKit settings: twelve-factor, every value from the environment with a safe default."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from novakit.databases import default_database
from novakit.env import env_bool, env_decimal, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEV_SECRET_KEY = "dev-insecure-novakit-secret-key-change-me"  # noqa: S105 (refused when DEBUG=0)
DEV_KEY_HASH_SECRET = "dev-insecure-novakit-key-hash-secret"  # noqa: S105 (refused when DEBUG=0)

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
# The HMAC secret that API keys are hashed with. Separate from SECRET_KEY so that
# rotating session signing does not invalidate every API key.
API_KEY_HASH_SECRET = env_str("API_KEY_HASH_SECRET", DEV_KEY_HASH_SECRET)
if not DEBUG and (SECRET_KEY == DEV_SECRET_KEY or API_KEY_HASH_SECRET == DEV_KEY_HASH_SECRET):
    raise ImproperlyConfigured(
        "DEBUG is off but SECRET_KEY or API_KEY_HASH_SECRET is the development default: "
        "set both to long random values."
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "ninja",
    "accounts",
    "billing",
    "completions",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "novakit.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "novakit.asgi.application"
WSGI_APPLICATION = "novakit.wsgi.application"

DATABASES = {"default": default_database(BASE_DIR)}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Redis, cache and Celery -------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
# Every key NovaKit writes to Redis starts with this, so deployments (and test
# runs) can share one server.
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "novakit:")
# Per event loop (one per worker process); a request holds one only for a command.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 64, minimum=1)
# Redis answers in well under a millisecond: a slower answer counts as a failure,
# so a sick Redis costs a request at most this long (see novakit/runtime/redis.py).
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5, minimum=0.01)
# After a failure, Redis is left alone this long: rate limits fail open and the
# key cache trusts its TTL meanwhile.
REDIS_RETRY_SECONDS = env_float("REDIS_RETRY_SECONDS", 2.0, minimum=0)

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL) or None
# No broker configured: tasks run in the calling process so the embedded
# default still aggregates usage without a worker.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# --- API keys ----------------------------------------------------------------
# How long a key lookup is trusted in a process: with Redis a revocation or suspension
# reaches every process at once (accounts/auth.py); otherwise this is the bound.
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 5.0, minimum=0)

# --- Rate limits (accounts/ratelimit.py; README "Rate limits") -----------------
RATE_LIMIT_ENABLED = env_bool("RATE_LIMIT_ENABLED", True)
# Per organization when its own fields are empty; 0 means unlimited. Generous
# on purpose: they stop a runaway client, the per-key limits shape traffic.
RATE_LIMIT_ORG_RPM_DEFAULT = env_int("RATE_LIMIT_ORG_RPM_DEFAULT", 3_000, minimum=0)
RATE_LIMIT_ORG_TPM_DEFAULT = env_int("RATE_LIMIT_ORG_TPM_DEFAULT", 10_000_000, minimum=0)
# A concurrency slot is a lease its process renews every third of this while the
# request runs: the slot of a request whose process died frees itself within it.
RATE_LIMIT_CONCURRENCY_LEASE_SECONDS = env_int(
    "RATE_LIMIT_CONCURRENCY_LEASE_SECONDS", 15, minimum=3
)

# --- Billing -----------------------------------------------------------------
# Credits per 1,000 tokens at a 1x multiplier; see README "Credits".
CREDITS_PER_1K_PROMPT_TOKENS = env_decimal("CREDITS_PER_1K_PROMPT_TOKENS", "100")
CREDITS_PER_1K_COMPLETION_TOKENS = env_decimal("CREDITS_PER_1K_COMPLETION_TOKENS", "300")
CREDITS_WEB_SEARCH_SURCHARGE = env_decimal("CREDITS_WEB_SEARCH_SURCHARGE", "10")
CREDITS_PER_IMAGE_SURCHARGE = env_decimal("CREDITS_PER_IMAGE_SURCHARGE", "2")
# A reservation not settled within this many seconds belongs to a request that
# died with its process; the expiry job releases it.
RESERVATION_TTL_SECONDS = env_int("RESERVATION_TTL_SECONDS", 900, minimum=60)
DEMO_CREDITS = env_int("DEMO_CREDITS", 1_000_000, minimum=0)
# What a credit sells for: revenue in the staff margin table, the price of a top-up.
CREDIT_PRICE_USD = env_decimal("CREDIT_PRICE_USD", "0.00002")
# A request served with an organization's own provider key (bring your own key) is
# charged this share of what it would have cost on the platform's key.
BYOK_FEE_PERCENT = env_decimal("BYOK_FEE_PERCENT", "5")
# Redemption codes that did not work, per organization per hour, before it is refused.
REDEMPTION_FAILURES_PER_HOUR = env_int("REDEMPTION_FAILURES_PER_HOUR", 10, minimum=1)

# --- Payments: credit top-ups through Stripe Checkout (README "Payments") -------
# Empty: top-ups are off, and the portal does not offer them.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "https://api.stripe.com")
# A reversed payment's debt is repaid by the next purchase, and (1) by grants and codes too.
DEBT_TAKES_FREE_CREDITS = env_bool("DEBT_TAKES_FREE_CREDITS", True)
# The organization staff belong to: its webhooks hear of platform events (catalog.uncovered).
STAFF_ORGANIZATION_SLUG = env_str("STAFF_ORGANIZATION_SLUG", "")
# What one top-up may be, in USD (credits at CREDIT_PRICE_USD).
TOPUP_MIN_USD = env_decimal("TOPUP_MIN_USD", "5")
TOPUP_MAX_USD = env_decimal("TOPUP_MAX_USD", "1000")
# What a purchase's receipt says of the seller and the tax its price includes (README "Payments").
RECEIPT_SELLER = env_str("RECEIPT_SELLER", "")
RECEIPT_TAX_ID = env_str("RECEIPT_TAX_ID", "")
RECEIPT_TAX_NAME = env_str("RECEIPT_TAX_NAME", "Tax")
RECEIPT_TAX_PERCENT = env_decimal("RECEIPT_TAX_PERCENT", "0")

# --- Upstream providers ------------------------------------------------------
OPENROUTER_API_KEY = env_str("OPENROUTER_API_KEY", "")
OPENROUTER_BASE_URL = env_str("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1")
UPSTREAM_CONNECT_TIMEOUT = env_float("UPSTREAM_CONNECT_TIMEOUT", 5.0, minimum=0.01)
UPSTREAM_FIRST_BYTE_TIMEOUT = env_float("UPSTREAM_FIRST_BYTE_TIMEOUT", 60.0, minimum=0.01)
UPSTREAM_CHUNK_TIMEOUT = env_float("UPSTREAM_CHUNK_TIMEOUT", 30.0, minimum=0.01)
UPSTREAM_MAX_CONNECTIONS = env_int("UPSTREAM_MAX_CONNECTIONS", 512, minimum=1)
# Provider API keys are encrypted at rest with a key derived from this value.
PROVIDER_KEY_ENCRYPTION_SECRET = env_str("PROVIDER_KEY_ENCRYPTION_SECRET", SECRET_KEY)
CATALOG_CACHE_SECONDS = env_float("CATALOG_CACHE_SECONDS", 30.0, minimum=0)
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

# --- Management API ----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.drf.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "novakit.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "NovaKit management API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Background jobs -----------------------------------------------------------
USAGE_ROLLUP_LOOKBACK_SECONDS = env_int("USAGE_ROLLUP_LOOKBACK_SECONDS", 3 * 3600, minimum=60)
# Refused requests (402, 429, 503) written to the usage records per key per second and
# process; the rest are only counted (completions/refusals.py).
USAGE_REFUSALS_PER_KEY_PER_SECOND = env_int("USAGE_REFUSALS_PER_KEY_PER_SECOND", 5, minimum=0)
# How often beat asks for the usage rollup; the default suits production, a test of
# the whole process topology shortens it so beat -> broker -> worker happens within seconds.
USAGE_ROLLUP_INTERVAL_SECONDS = env_float("USAGE_ROLLUP_INTERVAL_SECONDS", 60.0, minimum=1)
USAGE_RETENTION_DAYS = env_int("USAGE_RETENTION_DAYS", 90, minimum=1)
# The tier rule (billing.tiers.tier_for_price): a model staff have not tiered
# gets the tier and multiplier of the first band its completion price (USD per
# million tokens) is under. Used by the shipped catalog's generator and by the
# catalog sync for the models it adds; each multiplier sits in its tier's range.
CATALOG_SYNC_TIER_BANDS: list[tuple[float, str, str]] = [
    (1.0, "basic", "1.0"),
    (5.0, "standard", "1.5"),
    (15.0, "standard", "2.0"),
    (40.0, "powerful", "2.5"),
    (float("inf"), "powerful", "3.0"),
]
CATALOG_SYNC_ENABLED = env_bool("CATALOG_SYNC_ENABLED", True)
LOW_BALANCE_DEFAULT_THRESHOLD = env_int("LOW_BALANCE_DEFAULT_THRESHOLD", 0, minimum=0)
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "NovaKit <noreply@localhost>")

CELERY_BEAT_SCHEDULE = {
    "usage-rollup": {"task": "completions.tasks.usage_rollup_task",
                     "schedule": USAGE_ROLLUP_INTERVAL_SECONDS},
    "usage-retention": {"task": "completions.tasks.usage_retention_task", "schedule": 3600.0},
    "catalog-sync": {"task": "completions.tasks.catalog_sync_task", "schedule": 6 * 3600.0},
    "expire-requests": {"task": "completions.tasks.requests_expire_task", "schedule": 60.0},
    "low-balance-alerts": {"task": "billing.tasks.low_balance_alerts_task", "schedule": 300.0},
    "reconciliation": {"task": "completions.tasks.reconciliation_task", "schedule": 3600.0},
    "auto-recharge": {"task": "billing.tasks.auto_recharge_task", "schedule": 60.0},
}
# How far back reconciliation looks (twice its interval: a late run leaves no gap), how much.
RECONCILIATION_LOOKBACK_SECONDS = env_int("RECONCILIATION_LOOKBACK_SECONDS", 7200, minimum=60)
RECONCILIATION_BATCH = env_int("RECONCILIATION_BATCH", 500, minimum=1)
# Without a broker the web process runs the beat schedule itself (novakit/scheduler.py).
IN_PROCESS_BEAT = env_bool("IN_PROCESS_BEAT", not REDIS_URL)

# --- Production hardening (DEBUG off) ---------------------------------------------
if not DEBUG:
    # TLS ends at the load balancer, which says so in X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Probes and the metrics scraper talk plain HTTP inside the cluster.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# Static files are served by the app itself (WhiteNoise), compressed and cached.
MIDDLEWARE.insert(1, "novakit.static.StaticFilesMiddleware")
MIDDLEWARE.insert(0, "novakit.observability.RequestIdMiddleware")
# Inside CommonMiddleware, so a path missing its slash is still redirected to the one with it.
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.common.CommonMiddleware") + 1,
                  "novakit.error_pages.NotFoundPageMiddleware")
CSRF_FAILURE_VIEW = "novakit.error_pages.csrf_failure"
# The inference API (API keys, JSON, no cookies) is served by a handler of its
# own with only these (novakit/runtime/inference.py): sessions, CSRF, messages and sign-in
# throttling are the portal's, and each of Django's hooks is a thread hop.
INFERENCE_PATH_PREFIXES = ("/api/v1/chat/", "/api/v1/models")
INFERENCE_MIDDLEWARE = [
    "novakit.observability.RequestIdMiddleware",
    "novakit.runtime.middleware.EventLoopSecurityMiddleware",
    "novakit.runtime.middleware.EventLoopCommonMiddleware",
    "novakit.runtime.middleware.ApiErrorShapeMiddleware",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Logs: JSON lines in production (one object per line, request id on each),
# plain text for a developer's terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "plain" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "novakit.observability.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}

# /metrics: with METRICS_TOKEN set, the scraper sends `Authorization: Bearer <token>`;
# without it, only these networks may scrape (the pod network in Kubernetes).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])

# --- Developer portal (/portal/, portal/urls.py) ------------------------------------
STATICFILES_DIRS = [BASE_DIR / "static"]
# With the development settings (`make run`, tests) static files are served
# straight from the apps' folders and static/, no collectstatic needed;
# production (DEBUG=0) serves the collected, hashed files only.
WHITENOISE_USE_FINDERS = DEBUG
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "login"
# Credits granted to the organization a portal sign-up creates.
PORTAL_SIGNUP_CREDITS = env_int("PORTAL_SIGNUP_CREDITS", 10_000, minimum=0)

# --- Sign-in throttling (accounts/signin_throttle.py, django-axes) ------------------
# After LOGIN_FAILURE_LIMIT failed sign-ins for one username from one address, that pair
# gets a 429 for LOGIN_LOCKOUT_SECONDS, counted in the database. The address is
# REMOTE_ADDR, from X-Forwarded-For only for a proxy FORWARDED_ALLOW_IPS names
# (novakit/runtime/serve.py; none by default), so a client cannot choose its own.
INSTALLED_APPS.append("axes")
AUTHENTICATION_BACKENDS = [
    "accounts.signin_throttle.SignInThrottleBackend",  # first: refuses a locked-out pair
    "django.contrib.auth.backends.ModelBackend",
]
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last, as axes requires
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Attempts made while locked out do not extend the lock: it ends when the page says.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "accounts.signin_throttle.locked_out_response"
AXES_CLIENT_IP_CALLABLE = "accounts.signin_throttle.client_address"

# Webhooks may only target public addresses; development and tests may allow
# some private networks (e.g. 127.0.0.1/32 for a local receiver). Empty in production.
WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = env_list("WEBHOOKS_ALLOWED_PRIVATE_NETWORKS", [])
CELERY_BEAT_SCHEDULE["keys-expiring"] = {
    "task": "accounts.tasks.keys_expiring_notify_task", "schedule": 3600.0,
}
# Failed webhook deliveries are retried by this job when their backoff is over (10 s at first).
CELERY_BEAT_SCHEDULE["webhook-retries"] = {
    "task": "accounts.tasks.webhook_retries_due_task", "schedule": 5.0,
}
# How long a chat completion sent with an Idempotency-Key keeps its stored answer.
IDEMPOTENCY_TTL_SECONDS = env_int("IDEMPOTENCY_TTL_SECONDS", 24 * 3600, minimum=60)
CELERY_BEAT_SCHEDULE["idempotency-purge"] = {
    "task": "completions.tasks.idempotency_purge_task", "schedule": 3600.0,
}
# The staff dashboard lists open reservations older than this: no request takes so long.
STAFF_STALE_RESERVATION_SECONDS = env_int("STAFF_STALE_RESERVATION_SECONDS", 600, minimum=1)
# --- Runtime (novakit/runtime/README.md: what each piece bought, and its off switch) ---
# Threads (and so database connections) per process for the async request path;
# 0 uses Django's thread-sensitive default (a thread and connection per request).
DB_THREADS = env_int("DB_THREADS", 8, minimum=0)
# The inference API's own handler and short middleware chain (novakit/runtime/inference.py);
# off: the inference paths go through Django's handler and MIDDLEWARE like the rest.
INFERENCE_HANDLER = env_bool("INFERENCE_HANDLER", True)
# The garbage collector after start-up (novakit/runtime/lifespan.py): what start-up built
# frozen out of its reach; the youngest generation collected every GC_YOUNG_THRESHOLD objects.
GC_FREEZE = env_bool("GC_FREEZE", True)
GC_YOUNG_THRESHOLD = env_int("GC_YOUNG_THRESHOLD", 20_000, minimum=0)
# Requests that wait together share one database group and one Redis pipeline
# (novakit/runtime/batching.py); off: every item runs on its own, at once.
BATCHING = env_bool("BATCHING", True)
# --- Process type (novakit/runtime/README.md "Process types") ------------------------
# `all` (the default, `make run`, the web process type) serves everything; `inference`
# only the inference API with health and metrics, without admin, portal, DRF, templates.
NOVAKIT_PROCESS = env_str("NOVAKIT_PROCESS", "all")
if NOVAKIT_PROCESS not in ("all", "inference"):
    raise ImproperlyConfigured(f"NOVAKIT_PROCESS must be all or inference, not {NOVAKIT_PROCESS!r}")
if NOVAKIT_PROCESS == "inference":
    _NOT_FOR_INFERENCE = {"django.contrib.admin", "django.contrib.sessions",
                          "django.contrib.messages", "django.contrib.staticfiles",
                          "rest_framework", "drf_spectacular", "axes"}
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app not in _NOT_FOR_INFERENCE]
    # Every path goes through the short chain: the inference handler's paths and the rest
    # (health, metrics, 404s) through Django's own handler with the same middleware.
    MIDDLEWARE = list(INFERENCE_MIDDLEWARE)
    ROOT_URLCONF = "novakit.inference_urls"
    TEMPLATES = []
    AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
