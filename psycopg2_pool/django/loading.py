"""Django's PostgreSQL backend, loaded on psycopg2.

Django's backend (``django.db.backends.postgresql``) picks its driver once per process, when
its ``psycopg_any`` module is first imported: psycopg 3 whenever ``import psycopg`` works,
else psycopg2. This backend pools psycopg2 connections, so it imports Django's backend with
``psycopg`` hidden (``sys.modules["psycopg"] = None`` makes ``import psycopg`` raise
ImportError, as the import system documents), then puts back whatever was there. Django's
PostgreSQL backend is then on psycopg2 for the whole process, the stock
``django.db.backends.postgresql`` engine of any other alias included.

When something imported Django's backend on psycopg 3 first (``django.contrib.postgres`` in
``INSTALLED_APPS`` does, as Django loads the apps), the driver cannot change any more:
:func:`postgresql_base` raises ``ImproperlyConfigured`` saying so, and listing
``"psycopg2_pool.django"`` before ``django.contrib.postgres`` in ``INSTALLED_APPS`` (see
``apps.py``) loads it first.

Hiding ``psycopg`` lasts for one import, at start-up; a thread importing psycopg for the
first time in that instant would see an ImportError.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from django.core.exceptions import ImproperlyConfigured

BACKEND = "django.db.backends.postgresql.base"
DRIVER_CHOICE = "django.db.backends.postgresql.psycopg_any"

_MISSING = object()


def postgresql_base() -> ModuleType:
    """``django.db.backends.postgresql.base``, on psycopg2 (imported so, if not yet)."""
    if DRIVER_CHOICE not in sys.modules:
        _import_without_psycopg3(BACKEND)
    if sys.modules[DRIVER_CHOICE].is_psycopg3:
        raise ImproperlyConfigured(
            "psycopg2_pool.django pools psycopg2 connections, but Django's PostgreSQL "
            "backend was already loaded on psycopg 3 (Django picks psycopg 3 whenever it is "
            "installed, once per process; django.contrib.postgres in INSTALLED_APPS, or an "
            "alias with ENGINE 'django.db.backends.postgresql' used first, loads it). Put "
            "'psycopg2_pool.django' in INSTALLED_APPS before 'django.contrib.postgres' so "
            "that it loads Django's backend on psycopg2 first, or uninstall psycopg 3.")
    return importlib.import_module(BACKEND)


def _import_without_psycopg3(name: str) -> None:
    modules: dict[str, Any] = sys.modules  # which may map a name to None
    before = modules.get("psycopg", _MISSING)
    modules["psycopg"] = None  # import psycopg: ImportError
    try:
        importlib.import_module(name)
    finally:
        if before is not _MISSING:
            modules["psycopg"] = before
        elif "psycopg" in modules and modules["psycopg"] is None:
            del modules["psycopg"]
