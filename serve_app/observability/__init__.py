"""What operators see: application metrics (``metrics``) and request ids (``request_ids``)."""
