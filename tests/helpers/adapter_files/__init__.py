"""Adapter folders and archives for tests, one namespace (`from tests.helpers import adapter_files
as f`)."""

from tests.helpers.adapter_files.folders import *  # noqa: F403
