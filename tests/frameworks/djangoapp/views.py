"""Each view names the alias to use in its URL: every alias of the test settings points at
one database, with different pool settings."""

from __future__ import annotations

import threading

from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .models import Item

#: Set by a test to let ``hold`` return.
RELEASE = threading.Event()


def pid(request: HttpRequest, alias: str) -> JsonResponse:
    """The server process serving this request's connection."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return JsonResponse({"pid": cursor.fetchone()[0]})


def count(request: HttpRequest, alias: str) -> JsonResponse:
    return JsonResponse({"count": Item.objects.using(alias).count()})


def hold(request: HttpRequest, alias: str) -> HttpResponse:
    """Keeps its connection until the test sets RELEASE: a leak, as the detector sees one.
    Its first query runs deep inside Django: a template evaluates the queryset."""
    page = render(request, "items.html", {"items": Item.objects.using(alias)})  # LEAK: here
    RELEASE.wait(10)
    return page
