from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "modelport.dashboard"
    label = "dashboard"
