"""Reads of registry data. `model_access` is the one authorization choke point for models."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from modelport.common.problems import Problem
from modelport.registry.models import Model, ModelVersion


def model_not_found(owner: str, name: str) -> Problem:
    return Problem(404, f"model {owner}/{name} not found")


def model_access(*, user: AbstractBaseUser | None, owner: str, name: str, write: bool = False) -> Model:
    """The model `owner/name` if `user` may see it (write: may change it).

    "Missing" and "someone else's private model" raise the same 404 so existence is not leaked;
    writing to someone else's public model is a 403.
    """
    if "\x00" in owner or "\x00" in name:  # PostgreSQL refuses NUL in text: treat as not found
        raise model_not_found(owner.replace("\x00", ""), name.replace("\x00", ""))
    model = Model.objects.select_related("owner", "default_version").filter(owner__username=owner, name=name).first()
    is_owner = model is not None and user is not None and model.owner_id == user.pk
    if model is None or (not is_owner and model.visibility != Model.Visibility.PUBLIC):
        raise model_not_found(owner, name)
    if write and not is_owner:
        raise Problem(403, f"only the owner can change {owner}/{name}")
    return model


def royalty_at(model: Model, now: datetime) -> int:
    """The royalty (µc) a call of `model` admitted at `now` pays: a pending increase applies
    from its `royalty_pending_at` on. Attribute reads and a compare: it runs on every call."""
    pending = model.royalty_pending
    if pending is not None and model.royalty_pending_at is not None and now >= model.royalty_pending_at:
        return pending
    return model.royalty_per_call


def model_called_by_others(*, model: Model) -> bool:
    """Whether anyone but its owner has called `model` (any version, any outcome)."""
    from modelport.gateway.models import Prediction

    return Prediction.objects.filter(version__model_id=model.pk).exclude(user_id=model.owner_id).exists()


def models_visible(*, user: AbstractBaseUser) -> QuerySet[Model]:
    return Model.objects.select_related("owner", "default_version").filter(
        Q(owner=user) | Q(visibility=Model.Visibility.PUBLIC)
    )


def version_default(*, model: Model) -> ModelVersion | None:
    """The version calls go to: the one set as default, else the newest ready version."""
    if model.default_version_id is not None:
        return model.default_version
    return model.versions.filter(status=ModelVersion.Status.READY).order_by("-number").first()


def version_get(*, model: Model, number: int) -> ModelVersion:
    version = model.versions.filter(number=number).first() if 0 < number < 2**31 else None
    if version is None:
        raise Problem(404, f"model {model.owner.username}/{model.name} has no version {number}")
    return version
