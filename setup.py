"""The one thing pyproject.toml cannot say: the optional C parts.

- ``psycopg2_pool._capture`` walks the checkout stack about eight times faster than Python
  can, for a pool whose listener asks for checkout stacks (the leak detector);
- ``psycopg2_pool._critical`` runs the checkout's and the return's critical sections as one
  C call each (psycopg2_pool.critical says why).

Both are optional: where they cannot be compiled (no C compiler, another Python
implementation), the install goes on and the package uses its Python versions, which behave
the same.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("psycopg2_pool._capture", ["psycopg2_pool/_capture.c"], optional=True),
    Extension("psycopg2_pool._critical", ["psycopg2_pool/_critical.c"], optional=True),
])
