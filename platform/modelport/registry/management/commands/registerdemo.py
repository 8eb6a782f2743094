from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from modelport.registry import services
from modelport.registry.models import Model
from workers.demo import mlp_onnx


class Command(BaseCommand):
    help = "Register the demo model USERNAME/mlp-demo (an MLP 784-256-10 built on the spot) if missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        owner = get_user_model().objects.get(username=username)
        if Model.objects.filter(owner=owner, name="mlp-demo").exists():
            self.stdout.write(f"{username}/mlp-demo already registered")
            return
        model = services.model_create(owner=owner, name="mlp-demo", visibility=Model.Visibility.PUBLIC,
                                      description="Demo: an MLP 784-256-10 on float32 [batch, 784].")
        with tempfile.TemporaryDirectory() as tmp:
            path = mlp_onnx(Path(tmp) / "mlp-demo.onnx")
            with open(path, "rb") as stream:
                services.model_version_create(model=model, fmt="onnx", artifact=services.Upload(path.name, stream),
                                              source=None, entrypoint="", init_kwargs_raw=None, inputs_raw=None,
                                              outputs_raw=None)
        self.stdout.write(f"registered {username}/mlp-demo (validating)")
