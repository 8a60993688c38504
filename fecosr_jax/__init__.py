"""fecosr_jax: FeCoSR (federated cross-market sequential recommendation) in JAX.

The core package imports only numpy at module level; JAX, TFDS and the optional text encoder
are imported by the modules that need them.
"""

__version__ = "0.1.0"
