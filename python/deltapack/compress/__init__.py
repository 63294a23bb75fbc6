"""Delta compression methods (each in its own module)."""
