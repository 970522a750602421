"""ModelScope source (``modelscope://org/name``), through the ``modelscope`` hub client."""
