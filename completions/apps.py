from django.apps import AppConfig


class CompletionsConfig(AppConfig):
    name = "completions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from completions import tokens
        from completions.upstream import upstream_client
        from novakit.runtime import lifespan

        lifespan.on_startup.append(tokens.load)
        lifespan.on_shutdown.append(upstream_client.aclose)
