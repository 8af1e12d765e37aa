"""Training: the queue in the database, the supervisor and the job process, the Ultralytics trainer, the
out-of-memory back-off, the model registry that decides promotions, and the K-fold label audit."""
