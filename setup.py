"""The C decode step (src/gpt2kit/inference/csrc/decode.c), built with the system's C compiler.

It is optional: where it cannot be built, the install goes on and the engine runs every step in
torch (gpt2kit/inference/native.py). Everything else is declared in pyproject.toml.
"""
import sys

from setuptools import Extension, setup

args = ["-O3", "-fopenmp-simd", "-std=c11"] if sys.platform != "win32" else ["/O2"]
setup(ext_modules=[Extension("gpt2kit.inference._decode", ["src/gpt2kit/inference/csrc/decode.c"],
                             extra_compile_args=args, libraries=[] if sys.platform == "win32" else ["m", "pthread"],
                             optional=True)])
