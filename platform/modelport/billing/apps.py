from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "modelport.billing"
    label = "billing"
