"""Datasets read from local files: MNIST (idx), CIFAR-10 (python pickles), text."""
