"""Intake: how a file dropped into inbox/ or labeled/ is looked at, registered, claimed, decided and moved,
once; `ingest` (images to classify), `labelled` (labelled drops), `fetch` (downloads into the inbox)."""
