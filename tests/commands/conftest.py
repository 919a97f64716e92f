"""Fixtures shared with the converter tests: `media`, a folder of tiny real media files."""

from tests.data_prep.converters.conftest import media  # noqa: F401
