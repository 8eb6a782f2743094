from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "modelport.registry"
    label = "registry"
