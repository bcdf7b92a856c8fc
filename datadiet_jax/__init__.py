"""datadiet_jax: per-example scores (EL2N, GraNd, forgetting, ...) and data pruning in JAX.

The package layout follows the pipeline: data -> models -> train -> scores -> prune.
"""

__version__ = "0.1.0"
