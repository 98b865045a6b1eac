"""The one thing pyproject.toml cannot say: the optional C part.

``telemetry._capture`` walks the checkout stack ten times faster than Python can. It is
optional: where it cannot be compiled (no C compiler, another Python implementation), the
install goes on and ``telemetry.stacks`` uses its Python version, frame for frame the same.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("telemetry._capture", ["telemetry/_capture.c"], optional=True)])
