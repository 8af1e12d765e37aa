"""The work on files: safe decoding, label parsing, inference, the dataset, training, reports."""
