"""What the backend tells Django about itself: Django's PostgreSQL features, and the one test
of Django's own suite that does not apply to it.

``django_test_skips`` is Django's hook for a backend to name the tests of Django's suite that
do not apply to it (Django's own backends and third-party ones declare theirs there; Django's
test runner skips them with the reason given). This backend declares one:
``test_connect_pool_setting_ignored_for_psycopg2`` checks that Django's psycopg2 backend
refuses ``OPTIONS["pool"]`` ("Database pooling requires psycopg >= 3"). Accepting that
setting on psycopg2 is what this backend is for. tests/frameworks/test_django_suite.py
allows exactly this declaration, and fails if another is added.
"""

from __future__ import annotations

from typing import Any

from django.utils.functional import cached_property

from .loading import postgresql_base

PostgreSQLFeatures: Any = postgresql_base().DatabaseWrapper.features_class

#: The reason the skip gives, and the test (a dotted name, as Django's runner takes it).
POOL_ON_PSYCOPG2 = ("psycopg2_pool.django accepts OPTIONS['pool'] on psycopg2: pooling "
                    "psycopg2 connections is what it is for.")
NOT_APPLICABLE = {POOL_ON_PSYCOPG2: {
    "backends.postgresql.tests.Tests.test_connect_pool_setting_ignored_for_psycopg2"}}


class DatabaseFeatures(PostgreSQLFeatures):  # type: ignore[misc]
    """Django's PostgreSQL features, plus :data:`NOT_APPLICABLE` in Django's test skips."""

    @cached_property  # type: ignore[untyped-decorator]
    def django_test_skips(self) -> dict[str, set[str]]:
        skips: dict[str, set[str]] = dict(super().django_test_skips)
        for reason, tests in NOT_APPLICABLE.items():
            skips[reason] = skips.get(reason, set()) | tests
        return skips
