"""The presets (configs/) and cards (assets/cards/) live at the top of the repository; a built
wheel carries copies inside the package, where `xlm.shipped` looks for them first."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"configs": "configs", "assets/cards": "cards"}  # source dir -> xlm/_shipped/<name>


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's own dirs
            return
        for source, name in SHIPPED.items():
            target = Path(self.build_lib) / "xlm" / "_shipped" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
