from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("pid/<str:alias>/", views.pid),
    path("count/<str:alias>/", views.count),
    path("hold/<str:alias>/", views.hold),
    path("", views.worker),
    path("visit/", views.visit),
]
