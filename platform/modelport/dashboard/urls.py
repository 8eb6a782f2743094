from django.urls import path

from modelport.dashboard import views

urlpatterns = [
    path("", views.home, name="home"),
]
