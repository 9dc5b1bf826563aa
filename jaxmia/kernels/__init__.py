"""Hand-written XLA:CPU kernels (XLA FFI custom calls) with pure-JAX fallbacks."""
