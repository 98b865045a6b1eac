"""Each view of tests/frameworks/test_django.py names the alias to use in its URL: every
alias of its settings points at one database, with different pool settings. ``worker`` and
``visit`` serve tests/integration/test_django_gunicorn.py (the ``default`` alias)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

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


def worker(request: HttpRequest) -> JsonResponse:
    """The process serving this request, after one query through the ORM."""
    return JsonResponse({"worker": os.getpid(), "items": Item.objects.count()})


#: Work done after the response, on a thread that outlives the request: Django closes a
#: request's connections when the request ends (``request_finished``), on the request's
#: thread only, so a connection this thread opens is never returned. The leak Django users
#: actually write, with a thread pool, a ``threading.Thread`` or a scheduler.
AUDIT = ThreadPoolExecutor(1, thread_name_prefix="audit")


def visit(request: HttpRequest) -> JsonResponse:
    """Records the visit in the background, and says which process queued it."""
    AUDIT.submit(record_visit, request.path)
    return JsonResponse({"worker": os.getpid()})


def record_visit(path: str) -> None:
    Item.objects.create(name=path[:50])  # LEAK: the audit thread's connection
