from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("product/<int:product_id>/", views.product),
    path("product/<int:product_id>/order/", views.order),
    path("driver/", views.driver),
]
