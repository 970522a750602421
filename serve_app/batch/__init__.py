"""The batch job (``python -m serve_app.batch``): the same request checks, preprocessing and engine
as online serving, driven over a JSONL file by Ray actors."""
