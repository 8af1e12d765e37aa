"""Intake: what both drop folders share on a file's way in (`core`: look, register and claim, destinations, moves);
what a file becomes is the caller's part: `ingest` (inbox/, a model step), `labelled` and `samples` (labeled/), `fetch`."""
