"""Inference: the model behind one I/O boundary (`model_io`), its loading and backends, the batch step the daemon
runs, review copies of low-confidence images, and re-classification after a promotion."""
