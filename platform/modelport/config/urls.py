from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from modelport.accounts import api as accounts_api
from modelport.billing import api as billing_api
from modelport.gateway import api as gateway_api
from modelport.gateway import v2
from modelport.ops import views as ops_views
from modelport.registry import api as registry_api

M = "api/v1/models/<str:owner>/<str:name>"

api_v1 = [
    path("api/v1/account", gateway_api.AccountView.as_view()),
    path("api/v1/account/usage", billing_api.UsageView.as_view()),
    path("api/v1/keys", accounts_api.KeyListView.as_view()),
    path("api/v1/keys/<str:prefix>", accounts_api.KeyDetailView.as_view()),
    path("api/v1/models", registry_api.ModelListView.as_view()),
    path(M, registry_api.ModelDetailView.as_view()),
    path(f"{M}/versions", registry_api.VersionListView.as_view()),
    path(f"{M}/versions/<int:number>", registry_api.VersionDetailView.as_view()),
    path(f"{M}/predictions", gateway_api.prediction_create),
    path(f"{M}/versions/<int:number>/predictions", gateway_api.prediction_create),
    path("api/v1/predictions", gateway_api.PredictionListView.as_view()),
    path("api/v1/predictions/<str:prediction_id>", gateway_api.PredictionDetailView.as_view()),
    path("api/v1/predictions/<str:prediction_id>/cancel", gateway_api.PredictionCancelView.as_view()),
    path("api/v1/predictions/<str:prediction_id>/webhook/resend", gateway_api.PredictionWebhookResendView.as_view()),
    path("api/v1/predictions/<str:prediction_id>/webhooks", gateway_api.PredictionWebhooksView.as_view()),
    path("api/v1/account/webhook_secret", gateway_api.WebhookSecretView.as_view()),
]

V2M = "v2/models/<str:owner>/<str:name>"
v2_urls = [
    path("v2/health/live", v2.health_live),
    path("v2/health/ready", v2.health_ready),
    path("v2", v2.server_metadata),
    path(V2M, v2.model_metadata),
    path(f"{V2M}/versions/<int:number>", v2.model_metadata),
    path(f"{V2M}/ready", v2.model_ready),
    path(f"{V2M}/versions/<int:number>/ready", v2.model_ready),
    path(f"{V2M}/infer", v2.infer),
    path(f"{V2M}/versions/<int:number>/infer", v2.infer),
]

urlpatterns = [
    *api_v1,
    *v2_urls,
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", gateway_api.health_live),
    path("readyz", ops_views.readyz),
    path("metrics", ops_views.metrics),
    # Before admin/: the admin's catch-all would answer admin/fleet/ with a 404.
    path("admin/fleet/", admin.site.admin_view(ops_views.fleet), name="admin-fleet"),
    path("admin/", admin.site.urls),
    path("", include("modelport.dashboard.urls")),
]

handler404 = "modelport.common.errors.handler404"
handler500 = "modelport.common.errors.handler500"
