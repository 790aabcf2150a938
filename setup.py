"""Installs the `codec` and `bitstream` packages and builds the C++ range coder (cpp/) with pybind11."""
import re
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "codec" / "__init__.py").read_text()).group(1)
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip() and not line.startswith(("pytest", "constriction"))
]

setup(
    name="codec",
    version=version,
    description="A learned image codec with a C++ range coder and self-describing bitstreams",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["codec", "codec.*", "bitstream", "bitstream.*"]),
    package_data={"codec": ["weights/*.safetensors", "weights/*.safetensors.[0-9][0-9][0-9]"]},
    ext_modules=[
        Pybind11Extension(
            "bitstream._rangecoder",
            ["cpp/bindings.cpp"],
            include_dirs=["cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ],
    cmdclass={"build_ext": build_ext},
    install_requires=requirements,
    entry_points={"console_scripts": ["codec = codec.cli:main"]},
)
