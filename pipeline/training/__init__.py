"""Training: the queue in the database, the supervisor and the job process, the Ultralytics trainer, the
out-of-memory back-off, and the model registry that decides promotions."""
