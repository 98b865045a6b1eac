"""The optional ``INSTALLED_APPS`` entry ``"psycopg2_pool.django"``.

Needed only where psycopg 3 is installed beside psycopg2 *and* something loads Django's
PostgreSQL backend before the first query, ``django.contrib.postgres`` above all: listed
before it, this app loads Django's backend on psycopg2 while Django imports the apps
(``loading.py`` says why). It has no models and changes nothing else.
"""

from __future__ import annotations

from django.apps import AppConfig

from .loading import postgresql_base

postgresql_base()


class Psycopg2PoolConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "psycopg2_pool.django"
    label = "psycopg2_pool"
    verbose_name = "psycopg2_pool"
