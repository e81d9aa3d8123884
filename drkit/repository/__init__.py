"""The on-storage repository format (see docs/format.md).

Nothing is imported here, so that a worker process importing only the modules it
needs (``crypto``, ``blob``) does not load the rest: a backup worker holds about
25 MiB instead of 33."""
