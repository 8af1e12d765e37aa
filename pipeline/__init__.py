"""The work on files: intake of both drop folders, images, inference, labels and the dataset, training, the report.
Imports go watcher -> pipeline -> storage; `errors.py` and `settings.py` (frozen values from the config) sit on top."""
