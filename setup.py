"""The one thing pyproject.toml cannot say: the optional C part.

``psycopg2_pool._capture`` walks the checkout stack about eight times faster than Python can, for a
pool whose listener asks for checkout stacks (the leak detector). It is optional: where it
cannot be compiled (no C compiler, another Python implementation), the install goes on and
``psycopg2_pool.stacks`` uses its Python version, frame for frame the same.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("psycopg2_pool._capture", ["psycopg2_pool/_capture.c"],
                             optional=True)])
