"""sas-ray: data-efficient contrastive SSL (SAS subsets) on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sas-ray")
except PackageNotFoundError:  # imported from a source tree that was not pip-installed
    __version__ = "0.1.0+src"
