"""Training recipes (PyTorch, the ``train`` extra): the only package that imports torch."""
