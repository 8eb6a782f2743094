"""Dashboard forms. They check what a browser can get wrong; the services enforce the rules."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm

from modelport.dashboard.templatetags.dashboard import FORMAT_LABELS
from modelport.registry.models import Model, ModelVersion

NAME_RULE = "Lowercase letters, digits, '.', '_' or '-'; starts with a letter or digit."


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="Used only to reset your password.")

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")


class ModelCreateForm(forms.Form):
    name = forms.RegexField(
        regex=r"^[a-z0-9][a-z0-9._-]{0,99}$",
        max_length=100,
        help_text=NAME_RULE,
        error_messages={"invalid": NAME_RULE},
    )
    visibility = forms.ChoiceField(
        choices=Model.Visibility.choices,
        initial=Model.Visibility.PRIVATE,
        widget=forms.RadioSelect,
        help_text="Public models can be called by every user (they pay for their calls).",
    )
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3}))


class ModelEditForm(forms.Form):
    """What the owner can change on the model's page (registry.services.model_update)."""

    visibility = forms.ChoiceField(
        choices=Model.Visibility.choices,
        widget=forms.RadioSelect,
        help_text="Public models can be called by every user (they pay for their calls).",
    )
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3}))


class VersionUploadForm(forms.Form):
    """The fields of `POST /api/v1/models/{owner}/{name}/versions`. With JavaScript the browser
    posts them to that endpoint itself (with a progress bar); without, this form does."""

    format = forms.ChoiceField(
        choices=list(FORMAT_LABELS.items()), initial=ModelVersion.Format.ONNX, widget=forms.RadioSelect
    )
    artifact = forms.FileField(label="Model file")
    source = forms.FileField(
        label="Source file (.py)", required=False, help_text="The Python file that defines the network."
    )
    entrypoint = forms.CharField(
        required=False, max_length=200, help_text="Name in the source of the nn.Module subclass or a factory function."
    )
    init_kwargs = forms.CharField(
        required=False,
        label="init_kwargs (JSON object)",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
    )
    inputs = forms.CharField(
        required=False,
        label="Inputs (JSON)",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text='[{"name": "x", "dtype": "float32", "shape": [null, 784]}] — null marks a dynamic axis.',
    )
    outputs = forms.CharField(
        required=False,
        label="Output names (JSON, optional)",
        widget=forms.Textarea(attrs={"rows": 1, "spellcheck": "false"}),
        help_text='["y"]',
    )


class KeyCreateForm(forms.Form):
    name = forms.CharField(required=False, max_length=100, help_text="A label to tell your keys apart.")


class UsageFilterForm(forms.Form):
    model = forms.ChoiceField(required=False)
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, model_choices: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [("", "All models"), *model_choices]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_to", "must be on or after the start date")
        return data
