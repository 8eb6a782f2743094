from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "modelport.accounts"
    label = "accounts"
