"""Adapter files for tests, one namespace (`from tests.helpers import adapter_files as f`):
folders.py  the test base model, one valid peft adapter, each way to break it (BAD_ADAPTERS)
archives.py a folder packed as .tar.gz or .zip, and each hostile archive
"""

from tests.helpers.adapter_files.archives import *  # noqa: F403
from tests.helpers.adapter_files.folders import *  # noqa: F403
