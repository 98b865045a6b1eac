"""Settings for every variant: only ``DATABASES["default"]`` differs, given as JSON in
``FRAMEWORKS_BENCH_DATABASE`` by benchmarks/frameworks.py.

Every variant runs on psycopg2. Django's PostgreSQL backend picks psycopg 3 whenever
``import psycopg`` works (once per process), and psycopg 3 is installed beside psycopg2 here;
``psycopg2_pool.django`` loads Django's backend on psycopg2 by hiding ``psycopg`` for that
one import. For the stock backend and django-db-connection-pool (whose PostgreSQL backend
subclasses the stock one and picks SQLAlchemy's dialect the same way), the same is done here
for the whole process: ``sys.modules["psycopg"] = None`` makes ``import psycopg`` raise
ImportError, so Django and django-db-connection-pool both fall back to psycopg2. The view
``/driver/`` reports the driver each server ended up with, and the benchmark refuses to
measure a server on another one.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_modules: dict[str, Any] = sys.modules  # which may map a name to None
_modules.setdefault("psycopg", None)  # no psycopg 3 in this process: see above

DEBUG = False
SECRET_KEY = "benchmark-only"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "djangosite.urls"
INSTALLED_APPS = ["djangosite"]
MIDDLEWARE = [  # what a small production site keeps, minus sessions and auth (no tables)
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": json.loads(os.environ["FRAMEWORKS_BENCH_DATABASE"])}
LOGGING_CONFIG = None
