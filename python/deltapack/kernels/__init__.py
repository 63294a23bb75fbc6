"""Kernels over the .dpk encodings. ``reference`` is the pure-torch ground truth."""
