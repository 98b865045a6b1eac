"""A tiny Django app (one model, its migration, three views) for tests/frameworks/test_django.py."""
