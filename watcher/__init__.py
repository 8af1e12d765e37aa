"""The daemon: sees files arrive, decides when they are complete, hands them to the pipeline, owns the CLI."""
