from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from modelport.registry.models import Model


def home(request: HttpRequest) -> HttpResponse:
    public = Model.objects.select_related("owner").filter(visibility=Model.Visibility.PUBLIC)[:50]
    mine = Model.objects.filter(owner=request.user) if request.user.is_authenticated else []
    return render(request, "dashboard/home.html", {"public_models": public, "my_models": mine})
