"""Routing: from the model a client names to the ordered targets that may answer it."""
