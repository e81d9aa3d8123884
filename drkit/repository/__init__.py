"""The on-storage repository format (see docs/format.md).

Nothing is imported here: a worker process that imports only the modules it needs
(``crypto``, ``blob``) then holds about 18 MiB instead of 30 MiB."""
