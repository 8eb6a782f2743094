from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: the audit log, the worker fleet view, health and metrics endpoints."""

    name = "modelport.ops"
    label = "ops"
    verbose_name = "Operations"
