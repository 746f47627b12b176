"""HTTP: Tornado handlers (thin) and the server process (listen, reload, workers, drain)."""
