"""The preprocessing process (CPU replicas, batch CPU actors): a chat plan's media fetched, decoded
and resized into what the engine takes (:mod:`serve_app.preprocess.prepared`)."""
