"""Performance benchmarks; ``python -m benchmarks`` (``make bench``) runs the scale benchmark."""
