"""A Django database backend on psycopg2 whose connections come from a ``ConnectionPool``.

``ENGINE: "psycopg2_pool.django"`` in ``settings.DATABASES``, with ``OPTIONS["pool"]`` True or
a dict of the pool's arguments, as Django's own pool for psycopg 3 is configured (see
docs/frameworks.md). Django is imported by the modules of this package only, when Django
loads the backend: ``import psycopg2_pool`` still needs psycopg2 alone.

- ``base.py``: the ``DatabaseWrapper`` Django loads.
- ``pools.py``: one pool per alias per process (settings checked, built, closed at exit).
- ``loading.py``: Django's PostgreSQL backend, loaded on psycopg2 even where psycopg 3 is
  installed too.
- ``apps.py``: the optional ``INSTALLED_APPS`` entry that loads it before
  ``django.contrib.postgres`` does.
"""
