from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "modelport.gateway"
    label = "gateway"
