from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.auth import context_extras
        from billing import signals  # noqa: F401 (connects the receivers)
        from billing.quotas import reservation_targets

        context_extras["reservation_targets"] = lambda organization_id, key_id: (
            reservation_targets(organization_id=organization_id, api_key_id=key_id))
