"""Builds native/ring.c as an optional extension: without a compiler ringgate installs anyway and
uses the pure-Python ring (same layout, same behaviour)."""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means: fall back to Python
            print(f"ringgate: native ring not built ({exc}); the pure-Python ring will be used", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"ringgate: native ring not built ({exc}); the pure-Python ring will be used", file=sys.stderr)


setup(
    ext_modules=[
        Extension(
            "ringgate._ring",
            sources=["native/ring.c"],
            depends=["native/ring_core.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
