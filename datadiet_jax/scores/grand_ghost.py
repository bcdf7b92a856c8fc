"""GraNd from ONE backward pass: exact per-example gradient norms without per-example gradients.

For a layer y = f(x; W) applied to a batch whose examples are independent (eval mode), the
per-example gradient of W is a function of that example's layer input x_b and output
cotangent dy_b = d loss_b / d y_b alone, so its squared norm can be computed layer by layer
and summed:

* Dense, y_b = X_b W + c with X_b: [T, K] (T = 1 for [B, K] inputs, T = tokens for
  [B, L, K]):  dW_b = X_b^T dY_b, dc_b = sum_t dY_b[t], and
    ||dW_b||^2 = <X_b X_b^T, dY_b dY_b^T>        (the ghost-norm identity, O(T^2 (K + N)))
               = ||X_b^T dY_b||^2                 (instantiated, O(T K N), reduced at once)
  For T = 1 both are ||x_b||^2 ||dy_b||^2.
* Conv: the same with X_b the im2col patches [T = output positions, K = kh kw Cin], built
  from kh x kw shifted (strided, dilated) views of the padded input, never materialised as
  one array: X_b X_b^T = sum_(i,j) V_ij V_ij^T and X_b^T dY_b = [V_ij^T dY_b]_(i,j).
  Per layer the cheaper form is used ("mixed ghost clipping", Bu et al. 2022): ghost when
  T (K + N) < K N (deep layers, few positions), instantiated otherwise (early layers).
* BatchNorm (running statistics) and LayerNorm: d scale_b = sum_t dy_b * xhat_b,
  d bias_b = sum_t dy_b, with xhat the normalised input.
* Embed: dE_b = sum_t onehot(id_t) dy_t, so ||dE_b||^2 = sum_(t,s) [id_t = id_s] <dy_t, dy_s>.

The inputs x and cotangents dy of every layer come from ONE forward and ONE backward pass of
the summed loss sum_b CE_b: each known layer's call is intercepted with
`flax.linen.intercept_methods` and its output passed through `_tap`, an identity with a
custom VJP that saves the layer's input and, in the backward pass, turns the output
cotangent dy into the layer's per-example squared norm (the cotangent of a zero "probe"
f32[B]); because examples are independent, dy_b is example b's own cotangent. The backward
pass differentiates w.r.t. the probes only, so no weight gradient is formed at all, and each
dy dies as soon as its layer's norm is taken.

Peak memory is O(B x activations) (+ B T^2 for ghost layers), not O(B x parameters), so the
members of an ensemble can be vmapped.

Anything else falls back to `grand.grand` (vmap(grad), exact for any Flax module): a
parameter that no known layer owns, a layer type or configuration not listed above (grouped
or input-dilated convolutions, CIRCULAR padding, DenseGeneral, BatchNorm with batch
statistics, ...), a layer called twice (shared weights) or through another method (e.g.
`Embed.attend`). Parameters read outside their layer's __call__ (e.g. a parent module reading
`self.embed.embedding` to tie weights) cannot be seen by the interceptor: such models must
use `method="vmap"`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from datadiet_jax.models.conv import matmul_wgrad_conv
from datadiet_jax.models.onednn_conv import onednn_conv
from datadiet_jax.scores._common import ApplyFn
from datadiet_jax.scores.grand import _split_params, grand as grand_vmap
from datadiet_jax.scores.loss import cross_entropy

_KINDS = {nn.Dense: "dense", nn.Conv: "conv", nn.BatchNorm: "batch_norm",
          nn.LayerNorm: "layer_norm", nn.Embed: "embed"}
_PARAM_NAMES = {"dense": {"kernel", "bias"}, "conv": {"kernel", "bias"},
                "batch_norm": {"scale", "bias"}, "layer_norm": {"scale", "bias"},
                "embed": {"embedding"}}


@dataclasses.dataclass(frozen=True)
class LayerCall:
  """Static description of one intercepted layer call (no arrays)."""
  kind: str                      # one of _KINDS' values
  path: tuple[str, ...]          # the module's scope path in variables['params']
  params: frozenset              # names of its parameters
  out_shape: tuple[int, ...]
  out_dtype: Any
  config: tuple = ()             # kind-specific static settings (see _layer_config)


@dataclasses.dataclass(frozen=True)
class GhostPlan:
  """The layer calls of one forward pass, or why the ghost method cannot be used."""
  calls: tuple[LayerCall, ...]
  unsupported: Optional[str] = None


# ---- which layers and settings are supported ---------------------------------------------

def _conv_config(module: nn.Conv, x) -> tuple[Optional[tuple], Optional[str]]:
  """(strides, dilation, pads) of a supported nn.Conv call, or (None, reason)."""
  rank = len(module.kernel_size) if not isinstance(module.kernel_size, int) else 1
  kernel_size = ((module.kernel_size,) if isinstance(module.kernel_size, int)
                 else tuple(module.kernel_size))

  def broadcast(v):
    if v is None:
      return (1,) * rank
    return (v,) * rank if isinstance(v, int) else tuple(v)

  if x.ndim != rank + 2:
    return None, f"conv input of rank {x.ndim} (needs [B, spatial..., C])"
  if module.feature_group_count != 1 or not module.shared_weights or module.mask is not None:
    return None, "grouped, unshared or masked convolution"
  if (module.conv_general_dilated not in (None, matmul_wgrad_conv, onednn_conv)
      or module.conv_general_dilated_cls is not None):
    return None, "a custom conv_general_dilated"
  if any(d != 1 for d in broadcast(module.input_dilation)):
    return None, "input-dilated (transposed) convolution"
  strides, dilation = broadcast(module.strides), broadcast(module.kernel_dilation)
  padding = module.padding
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      return None, f"conv padding {padding!r}"
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    pads = tuple(lax.padtype_to_pads(x.shape[1:-1], dilated, strides, padding.upper()))
  else:
    pads = tuple(tuple(p) for p in nn.linear.canonicalize_padding(padding, rank))
  return (kernel_size, strides, dilation, tuple((int(lo), int(hi)) for lo, hi in pads)), None


def _layer_config(kind: str, module, args, kwargs) -> tuple[tuple, Optional[str]]:
  """Static settings the norm computation needs, or ((), reason) when unsupported."""
  x = args[0]
  if kind == "dense":
    if module.dot_general is not None or module.dot_general_cls is not None or x.ndim < 2:
      return (), "Dense with a custom dot_general or unbatched input"
    return (module.use_bias,), None
  if kind == "conv":
    config, reason = _conv_config(module, x)
    return ((module.use_bias,) + config if config else ()), reason
  if kind == "batch_norm":
    use_running = args[1] if len(args) > 1 else kwargs.get("use_running_average")
    use_running = module.use_running_average if use_running is None else use_running
    if not use_running or kwargs.get("mask") is not None:
      return (), "BatchNorm with batch statistics (train mode): examples are not independent"
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    axes = tuple(sorted(a % x.ndim for a in axes))
    if 0 in axes:
      return (), "BatchNorm over the batch axis"
    return (axes, float(module.epsilon), module.use_scale, module.use_bias), None
  if kind == "layer_norm":
    if (module.reduction_axes not in (-1, (-1,)) or module.feature_axes not in (-1, (-1,))
        or kwargs.get("mask") is not None or x.ndim < 2):
      return (), "LayerNorm over axes other than the last, or masked"
    return ((x.ndim - 1,), float(module.epsilon), module.use_scale, module.use_bias,
            bool(module.use_fast_variance)), None
  if kind == "embed":
    if x.ndim < 1:
      return (), "Embed of an unbatched id"
    return (), None
  raise AssertionError(kind)


# ---- the forward pass with interception ---------------------------------------------------

def _interceptor(plan_calls: Optional[list], problems: Optional[list],
                 calls: Optional[tuple], probes: Optional[list]):
  """An interceptor that records the layer calls (plan mode: plan_calls, problems) or taps
  each layer's output (run mode: calls of the plan, one probe f32[B] per call)."""
  counter = itertools.count()

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    kind = _KINDS.get(type(module))
    if kind is None:
      return next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      if problems is not None and context.method_name != "setup":
        problems.append(f"{type(module).__name__}.{context.method_name} is called")
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    index = next(counter)
    if plan_calls is not None:
      config, reason = _layer_config(kind, module, args, kwargs)
      if reason:
        problems.append(f"{'/'.join(module.scope.path) or 'top'}: {reason}")
      names = frozenset(module.variables.get("params", {}))
      plan_calls.append(LayerCall(kind, tuple(module.scope.path), names, tuple(y.shape),
                                  y.dtype, config))
      return y
    return _tap(calls[index], y, lax.stop_gradient(_layer_input(kind, module, args[0])),
                probes[index])

  return intercept


def _layer_input(kind: str, module, x):
  """What the layer's norm needs besides dy: x, the normalised input xhat, or the ids."""
  if kind in ("dense", "conv", "embed"):
    return x
  x = x.astype(jnp.float32)
  if kind == "batch_norm":
    stats = module.variables["batch_stats"]
    axes = tuple(sorted(a % x.ndim for a in (module.axis if isinstance(module.axis, tuple)
                                               else (module.axis,))))
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    mean = jnp.reshape(stats["mean"].astype(jnp.float32), shape)
    var = jnp.reshape(stats["var"].astype(jnp.float32), shape)
    return (x - mean) * lax.rsqrt(var + module.epsilon)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  if module.use_fast_variance:
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axis=-1, keepdims=True) - jnp.square(mean))
  else:
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * lax.rsqrt(var + module.epsilon)


def _param_paths(params) -> set:
  return {tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}


def make_plan(apply_fn: ApplyFn, variables, images: jax.Array) -> GhostPlan:
  """Traces one abstract forward pass and lists its layer calls (static; no FLOPs)."""
  calls, problems = [], []
  with nn.intercept_methods(_interceptor(calls, problems, None, None)):
    # A fresh function each time: eval_shape caches traces per function, and a cached trace
    # would not run the interceptor.
    jax.eval_shape(lambda v, x: apply_fn(v, x), variables, images)
  params, _ = _split_params(variables)
  owned = {}
  for call in calls:
    if call.path in owned:
      problems.append(f"{'/'.join(call.path)} is called more than once (shared weights)")
    owned[call.path] = call
    if not call.params <= _PARAM_NAMES[call.kind]:
      problems.append(f"{'/'.join(call.path)} has parameters {sorted(call.params)}")
  covered = {call.path + (name,) for call in calls for name in call.params}
  stray = sorted(_param_paths(params) - covered)
  if stray:
    problems.append(f"parameters outside the supported layers: {'/'.join(stray[0])}"
                    + (f" (+{len(stray) - 1} more)" if len(stray) > 1 else ""))
  return GhostPlan(tuple(calls), "; ".join(problems) or None)


# ---- per-layer squared norms, f32[B] -------------------------------------------------------

def _ghost_is_cheaper(positions: int, k: int, n: int) -> bool:
  """Ghost costs T^2 (K + N) multiply-adds per example, the instantiated form T K N."""
  return positions * (k + n) < k * n


def _weight_sq_norms(views, num_views: int, dy: jax.Array) -> jax.Array:
  """||[V_1 ... V_m]^T dY||^2 per example, X = [V_1 ... V_m] concatenated along K.

  views(i) -> f32[B, T, K_i] (traceable in i: the views are formed one at a time inside a
  scan, so only one is alive; formed all at once they cost m x the input's memory);
  dy: f32[B, T, N] -> f32[B].
  """
  batch, positions, n = dy.shape
  k = num_views * jax.eval_shape(views, 0).shape[2]
  hi = lax.Precision.HIGHEST
  if positions == 1:
    def add(total, i):
      return total + jnp.sum(jnp.square(views(i)[:, 0]), axis=-1), None
    x_sq = lax.scan(add, jnp.zeros((batch,), jnp.float32), jnp.arange(num_views))[0]
    return x_sq * jnp.sum(jnp.square(dy[:, 0]), axis=-1)
  if _ghost_is_cheaper(positions, k, n):
    def add_gram(gram, i):
      v = views(i)
      return gram + jnp.einsum("btk,bsk->bts", v, v, precision=hi), None
    gram_x = lax.scan(add_gram, jnp.zeros((batch, positions, positions), jnp.float32),
                      jnp.arange(num_views))[0]
    gram_dy = jnp.einsum("btn,bsn->bts", dy, dy, precision=hi)
    return jnp.sum(gram_x * gram_dy, axis=(1, 2))

  def add_block(total, i):
    block = jnp.einsum("btk,btn->bkn", views(i), dy, precision=hi)  # rows of dW_b
    return total + jnp.sum(jnp.square(block), axis=(1, 2)), None
  return lax.scan(add_block, jnp.zeros((batch,), jnp.float32), jnp.arange(num_views))[0]


def _bias_sq_norms(dy: jax.Array) -> jax.Array:
  """dy: f32[B, T, N] -> ||sum_t dy||^2: f32[B]."""
  return jnp.sum(jnp.square(jnp.sum(dy, axis=1)), axis=-1)


def _conv_views(x: jax.Array, config: tuple, out_spatial: tuple[int, ...]):
  """(views, m): views(i) is the i-th of the m = prod(kernel_size) shifted (strided,
  dilated) views of the padded input, f32[B, T, Cin] with T = prod(out_spatial)."""
  kernel_size, strides, dilation, pads = config
  batch, channels = x.shape[0], x.shape[-1]
  xpad = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
  offsets = jnp.asarray(list(itertools.product(*(range(k) for k in kernel_size))), jnp.int32)
  window = [st * (n - 1) + 1 for st, n in zip(strides, out_spatial)]
  positions = math.prod(out_spatial)

  def views(i):
    start = offsets[i] * jnp.asarray(dilation, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    patch = lax.dynamic_slice(xpad, [zero, *start, zero], [batch, *window, channels])
    patch = lax.slice(patch, [0] * x.ndim, patch.shape, [1, *strides, 1])
    return patch.reshape(batch, positions, channels)

  return views, len(offsets)


def layer_sq_norms(call: LayerCall, saved: jax.Array, dy: jax.Array) -> jax.Array:
  """Squared norm of the per-example gradient of one layer's parameters -> f32[B]."""
  batch = dy.shape[0]
  dy = dy.astype(jnp.float32)
  if call.kind in ("dense", "conv"):
    n = dy.shape[-1]
    dy3 = dy.reshape(batch, -1, n)
    x = saved.astype(jnp.float32)
    if call.kind == "dense":
      x3 = x.reshape(batch, -1, x.shape[-1])
      views, num_views = (lambda i: x3), 1
      use_bias = call.config[0]
    else:
      use_bias, config = call.config[0], call.config[1:]
      views, num_views = _conv_views(x, config, tuple(dy.shape[1:-1]))
    total = _weight_sq_norms(views, num_views, dy3)
    return total + _bias_sq_norms(dy3) if use_bias else total
  if call.kind in ("batch_norm", "layer_norm"):
    axes, _, use_scale, use_bias = call.config[:4]
    reduce_axes = tuple(a for a in range(1, dy.ndim) if a not in axes)
    total = jnp.zeros((batch,), jnp.float32)
    if use_scale:
      total += jnp.sum(jnp.square(jnp.sum(dy * saved, axis=reduce_axes)).reshape(batch, -1),
                       axis=-1)
    if use_bias:
      total += jnp.sum(jnp.square(jnp.sum(dy, axis=reduce_axes)).reshape(batch, -1), axis=-1)
    return total
  if call.kind == "embed":
    ids = saved.reshape(batch, -1)
    dy3 = dy.reshape(batch, ids.shape[1], -1)
    same = (ids[:, :, None] == ids[:, None, :]).astype(jnp.float32)
    gram_dy = jnp.einsum("btn,bsn->bts", dy3, dy3, precision=lax.Precision.HIGHEST)
    return jnp.sum(same * gram_dy, axis=(1, 2))
  raise AssertionError(call.kind)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tap(call: LayerCall, y: jax.Array, saved: jax.Array, probe: jax.Array) -> jax.Array:
  """Identity on y. Backward: y's cotangent passes through unchanged, and the probe's
  cotangent is the layer's per-example squared gradient norm from (saved, dy), computed as
  soon as dy exists so that no cotangent outlives its layer's step of the backward pass."""
  del call, saved, probe
  return y


def _tap_fwd(call, y, saved, probe):
  del call, probe
  return y, saved


def _tap_bwd(call, saved, dy):
  # The barrier makes the rest of the backward pass wait for this layer's norm, so XLA
  # cannot postpone the norms to the end and keep every layer's dy alive (measured on CPU,
  # ResNet18-64, B = 128: 2.6 GB of temporaries without it).
  sq_norms = layer_sq_norms(call, saved, dy)
  dy, sq_norms = lax.optimization_barrier((dy, sq_norms))
  return dy, None, sq_norms


_tap.defvjp(_tap_fwd, _tap_bwd)


# ---- GraNd ---------------------------------------------------------------------------------

def per_example_sq_grad_norms(apply_fn: ApplyFn, variables, images: jax.Array,
                              labels: jax.Array, plan: Optional[GhostPlan] = None) -> jax.Array:
  """||d CE_b / d params||^2 for every example b, from one backward pass -> f32[B].

  Requires a supported plan (`make_plan(...).unsupported is None`).
  """
  plan = plan or make_plan(apply_fn, variables, images)
  if plan.unsupported:
    raise ValueError(f"the ghost-norm method does not support this model: {plan.unsupported}")
  batch = labels.shape[0]
  probes = [jnp.zeros((batch,), jnp.float32) for _ in plan.calls]

  def summed_loss(probes):
    with nn.intercept_methods(_interceptor(None, None, plan.calls, probes)):
      logits = apply_fn(variables, images)
    return jnp.sum(cross_entropy(logits, labels))

  return sum(jax.grad(summed_loss)(probes))


def grand_ghost(apply_fn: ApplyFn, variables, images: jax.Array,
                labels: jax.Array) -> jax.Array:
  """GraNd by ghost norms where the model allows, else vmap(grad).

  images: f32[B, H, W, C] normalized (or any batched model input); labels: i32[B] -> f32[B].
  """
  plan = make_plan(apply_fn, variables, images)
  if plan.unsupported:
    logging.info("GraNd: ghost norms unsupported (%s); using vmap(grad)", plan.unsupported)
    return grand_vmap(apply_fn, variables, images, labels)
  return jnp.sqrt(per_example_sq_grad_norms(apply_fn, variables, images, labels, plan))
