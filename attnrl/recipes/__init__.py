"""End-to-end jobs used by the example scripts, the ``attnrl`` command and the Ray launcher."""
