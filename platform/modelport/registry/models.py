from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9._-]{0,99}$", "lowercase letters, digits, '.', '_' or '-'")


class Model(models.Model):
    """A named model owned by a user; callers address it as `owner/name`."""

    class Visibility(models.TextChoices):
        PRIVATE = "private"
        PUBLIC = "public"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=100, validators=[slug_validator])
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.PRIVATE)
    description = models.TextField(blank=True, max_length=5000)
    default_version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    royalty_per_call = models.BigIntegerField(default=0, help_text="µc credited to the owner per call by others")
    # A royalty increase waits out MODELPORT_ROYALTY_NOTICE_S: until `royalty_pending_at` calls
    # pay `royalty_per_call`, from then on `royalty_pending` (registry.selectors.royalty_at).
    royalty_pending = models.BigIntegerField(null=True, blank=True, help_text="µc per call from royalty_pending_at")
    royalty_pending_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_model_per_owner")]
        ordering = ["owner_id", "name"]

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        VALIDATING = "validating"
        CONVERTING = "converting"
        READY = "ready"
        FAILED = "failed"

    class Format(models.TextChoices):
        ONNX = "onnx"
        TORCHSCRIPT = "torchscript"
        STATE_DICT = "state_dict"
        EXPORTED_PROGRAM = "exported_program"

    class Runtime(models.TextChoices):
        ONNX = "onnx"
        TORCH = "torch"

    class RequestedRuntime(models.TextChoices):
        AUTO = "auto"
        ONNX = "onnx"
        TORCH = "torch"

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    format = models.CharField(max_length=16, choices=Format.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    # Uploaded files (sha256 digests in the artifact store) and the declared signature.
    upload_sha256 = models.CharField(max_length=64)
    upload_filename = models.CharField(max_length=255)
    source_sha256 = models.CharField(max_length=64, blank=True)
    source_filename = models.CharField(max_length=255, blank=True, help_text="the uploaded source file's own name")
    entrypoint = models.CharField(max_length=200, blank=True)
    init_kwargs = models.JSONField(default=dict, blank=True)
    declared_inputs = models.JSONField(null=True, blank=True)
    declared_outputs = models.JSONField(null=True, blank=True)
    requested_runtime = models.CharField(
        max_length=8, choices=RequestedRuntime.choices, default=RequestedRuntime.AUTO,
        help_text="auto: ONNX when the conversion is faithful, else PyTorch in the sandbox",
    )
    runtime = models.CharField(max_length=8, choices=Runtime.choices, default=Runtime.ONNX,
                               help_text="what serves the version (decided by validation)")
    # What validation/conversion produced: the served ONNX artifact and its signature.
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    signature = models.JSONField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True)
    error = models.JSONField(null=True, blank=True)
    disabled = models.BooleanField(default=False)
    max_batch_size = models.PositiveIntegerField(default=8)
    max_queue_delay_ms = models.FloatField(default=2.0)
    min_replicas = models.PositiveIntegerField(default=0)
    max_queue = models.PositiveIntegerField(default=256, help_text="calls waiting beyond this are refused (429)")
    gpu_memory_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "number"], name="unique_version_number")]
        ordering = ["model_id", "-number"]

    def __str__(self) -> str:
        return f"{self.model} v{self.number}"
