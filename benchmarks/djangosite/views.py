"""``GET /product/<id>/``: a product and its five latest orders (two queries);
``POST /product/<id>/order/``: that, then an order placed in a transaction (``BEGIN``, an
``INSERT``, an ``UPDATE`` of the stock, ``COMMIT``); ``GET /driver/``: which driver and
backend this process runs (no query)."""

from __future__ import annotations

import sys

from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Order, Product


def _page(product: Product) -> dict[str, object]:
    recent = list(Order.objects.filter(product=product).order_by("-id")
                  .values("id", "quantity", "created")[:5])
    return {"id": product.pk, "name": product.name, "price": str(product.price),
            "stock": product.stock,
            "recent": [{**row, "created": row["created"].isoformat()} for row in recent]}


@require_GET  # type: ignore[untyped-decorator]
def product(request: HttpRequest, product_id: int) -> JsonResponse:
    return JsonResponse(_page(get_object_or_404(Product, pk=product_id)))


@csrf_exempt  # type: ignore[untyped-decorator]
@require_POST  # type: ignore[untyped-decorator]
def order(request: HttpRequest, product_id: int) -> JsonResponse:
    item = get_object_or_404(Product, pk=product_id)
    page = _page(item)
    with transaction.atomic():
        placed = Order.objects.create(product=item, quantity=1)
        Product.objects.filter(pk=item.pk).update(stock=F("stock") - 1)
    return JsonResponse({**page, "placed": placed.pk}, status=200)


@require_GET  # type: ignore[untyped-decorator]
def driver(request: HttpRequest) -> JsonResponse:
    import psycopg2_pool

    return JsonResponse({
        "driver": connection.Database.__name__,  # psycopg2 or psycopg
        "wrapper": f"{type(connection).__module__}.{type(connection).__name__}",
        "psycopg3_loaded": bool(sys.modules.get("psycopg")),
        "psycopg2_pool": psycopg2_pool.__file__,
    })
