"""Stacking pytrees along a leading ensemble axis (for vmapped ensembles of seeds)."""

import jax
import jax.numpy as jnp


def stack_trees(trees):
  """[tree, ...] -> tree whose leaves have a new leading axis of len(trees)."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack_tree(tree):
  """Inverse of stack_trees."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves])
          for i in range(leaves[0].shape[0])]
