"""Database and file moves: the bottom layer. Imports nothing from `pipeline` or `watcher`."""
