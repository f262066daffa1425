"""Package discovery: `tierroute` lives in src/tierroute, and each service folder under
services/ is the subpackage `tierroute.<service>`. Every package below them is found here, so
a new module or folder needs no edit. (Metadata and dependencies are in pyproject.toml.)"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
ROOTS = {"tierroute": "src/tierroute"} | {
    f"tierroute.{d.name}": f"services/{d.name}"
    for d in sorted((HERE / "services").iterdir())
    if (d / "__init__.py").is_file()
}


def discover() -> list[str]:
    packages = []
    for name, folder in ROOTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(where=str(HERE / folder))]
    return packages


setup(packages=discover(), package_dir=ROOTS)
