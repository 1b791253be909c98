"""PathReasoner-JAX: pathology VLMs that reason over whole-slide images, in JAX/Flax NNX."""
__version__ = "0.1.0"
