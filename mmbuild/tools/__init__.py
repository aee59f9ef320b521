"""Developer commands run with ``python -m mmbuild.tools.<name>``."""
