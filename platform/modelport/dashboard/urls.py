from django.contrib.auth import views as auth_views
from django.urls import path

from modelport.dashboard import views

M = "models/<str:owner>/<str:name>"

urlpatterns = [
    path("", views.home, name="home"),
    path("static/<path:path>", views.static_file, name="static"),
    # Browsers and crawlers ask for /favicon.ico whatever the page links: the same icon, as .ico.
    path("favicon.ico", views.static_file, {"path": "img/favicon.ico"}, name="favicon"),
    # Accounts
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path("password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    # Models
    path("models/new/", views.model_new, name="model_new"),
    path(M + "/", views.model_detail, name="model_detail"),
    path(M + "/versions/<int:number>/", views.model_detail, name="version_detail"),
    path(M + "/versions/<int:number>/status/", views.version_status, name="version_status"),
    path(M + "/upload/", views.version_upload, name="version_upload"),
    path(M + "/default/", views.model_default, name="model_default"),
    path(M + "/edit/", views.model_edit, name="model_edit"),
    # Keys and billing
    path("keys/", views.keys, name="keys"),
    path("keys/<str:prefix>/revoke/", views.key_revoke, name="key_revoke"),
    path("billing/", views.billing, name="billing"),
    path("billing/usage.csv", views.usage_csv, name="usage_csv"),
]
