"""The daemon: sees files arrive, decides when they are complete, hands them to the pipeline; the `coverwatch`
command (cli/), the config (config/) and the periodic jobs (jobs/). Imports go watcher -> pipeline -> storage."""
