"""Intake: what both drop folders share on a file's way in (look, register and claim, destinations, moves).

What a file becomes is the caller's part: pipeline.ingest (inbox/: a model step) and pipeline.labelled (labeled/)."""
