"""The installed version of openhart, read from the package metadata: pyproject.toml is the one
place it is written."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("openhart")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
