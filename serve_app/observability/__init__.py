"""What operators see: application metrics (``metrics``), request ids (``request_ids``) and the
``/stats`` answer over every engine replica (``replica_stats``)."""
