from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "modelport.gateway"
    label = "gateway"

    def ready(self) -> None:
        from modelport.gateway import authcache

        authcache.connect_signals()
