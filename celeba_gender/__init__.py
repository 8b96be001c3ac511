"""celeba-gender: which backbone and which training treatment classify gender best on CelebA."""

__version__ = "0.1.0"
