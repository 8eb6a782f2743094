"""The Celery application: control plane only (validation, conversion, reaping).

Messages are JSON; pickle is never accepted (a broker message must not be able to run code).
`celery worker --serve` also starts the inference serving loop (gateway/serving.py) in the
worker process, which takes calls from Redis lists rather than Celery messages.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery, bootsteps
from celery.signals import setup_logging
from click import Option

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "modelport.config.settings")

app = Celery("modelport")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def keep_django_logging(**kwargs: Any) -> None:
    """Logging stays as settings.LOGGING made it (MODELPORT_LOG_LEVEL, JSON lines, request ids).
    Without a receiver of this signal Celery sets the root logger's level to the command's
    --loglevel (WARNING when none is given, as in the compose file), whatever
    CELERY_WORKER_HIJACK_ROOT_LOGGER says: MODELPORT_LOG_LEVEL then did not apply to workers
    and beat (compose workers dropped their INFO lines; the bench's serving worker wrote one
    per call at WARNING)."""


app.user_options["worker"].add(
    Option(("--serve",), is_flag=True, default=False, help="Host models: run the inference serving loop.")
)


class ServingStep(bootsteps.StartStopStep):
    """Starts/stops the serving loop with the worker (only with --serve)."""

    def __init__(self, parent: Any, serve: bool = False, **options: Any) -> None:
        super().__init__(parent, **options)
        self.enabled = bool(serve)
        self.loop: Any = None

    def start(self, parent: Any) -> None:
        from modelport.gateway.serving import ServingLoop

        worker_id = getattr(parent, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}"
        self.loop = ServingLoop(worker_id=f"{worker_id}:{os.getpid()}")
        self.loop.start()

    def stop(self, parent: Any) -> None:
        if self.loop is not None:
            self.loop.stop()


app.steps["worker"].add(ServingStep)
