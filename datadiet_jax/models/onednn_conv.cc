// XLA FFI custom calls: a 2-D NHWC/HWIO float32 convolution and both of its gradients,
// computed by oneDNN (the library PyTorch's CPU convolutions use).
//
// Built on first use by datadiet_jax/models/onednn_conv.py (g++, the oneDNN headers of the
// `onednn` extra, jaxlib's FFI headers) and registered as CPU targets:
//
//   datadiet_onednn_conv_fwd   x: f32[N, H, W, Ci],  w: f32[KH, KW, Ci, Co] -> y: f32[N, OH, OW, Co]
//   datadiet_onednn_conv_bwd_data     dy: f32[N, OH, OW, Co], w -> dx: f32[N, H, W, Ci]
//   datadiet_onednn_conv_bwd_weights  x, dy -> dw: f32[KH, KW, Ci, Co]
//
// Attributes (i64[2] each): strides, padding_lo, padding_hi, dilation (lax's rhs_dilation,
// 1 = dense). Activations stay NHWC (oneDNN's nhwc kernels, as PyTorch's channels_last);
// the weights go to whatever layout oneDNN's kernel prefers ("any") through a reorder.
// Primitives are created once per shape and cached.

#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  memory::dims src, weights, dst, strides, dilation, pad_lo, pad_hi;
};

// Logical oneDNN dims (N, C, H, W) / (O, I, KH, KW) from NHWC / HWIO buffer dims.
Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                      ffi::Span<const int64_t> dilation) {
  Geometry g;
  g.src = {x[0], x[3], x[1], x[2]};
  g.weights = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.strides = {strides[0], strides[1]};
  g.dilation = {dilation[0] - 1, dilation[1] - 1};
  g.pad_lo = {pad_lo[0], pad_lo[1]};
  g.pad_hi = {pad_hi[0], pad_hi[1]};
  return g;
}

std::string Key(int kind, const Geometry& g) {
  std::ostringstream key;
  key << kind;
  for (const auto* dims : {&g.src, &g.weights, &g.dst, &g.strides, &g.dilation, &g.pad_lo,
                           &g.pad_hi}) {
    key << '|';
    for (auto d : *dims) key << d << ',';
  }
  return key.str();
}

// Every primitive takes its scratchpad from the caller: XLA may run two custom calls at once
// on its own threads, and oneDNN's library-managed scratchpad is not safe for that.
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

memory::desc Nhwc(const memory::dims& dims) { return memory::desc(dims, dt::f32, tag::nhwc); }

// Weights in whatever layout the kernel oneDNN picks prefers.
memory::desc AnyLayout(const memory::dims& dims) {
  return memory::desc(dims, dt::f32, tag::any);
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Nhwc(g.src), AnyLayout(g.weights), Nhwc(g.dst), g.strides, g.dilation, g.pad_lo,
      g.pad_hi, UserScratchpad());
}

// convolution_backward_{data,weights}::primitive_desc: the same arguments (the src or its
// gradient, the weights or theirs, the output's gradient), with the forward as the hint.
template <typename BackwardPrimitiveDesc>
BackwardPrimitiveDesc BackwardDesc(const Geometry& g,
                                   const dnnl::convolution_forward::primitive_desc& forward) {
  return BackwardPrimitiveDesc(Engine(), dnnl::algorithm::convolution_direct, Nhwc(g.src),
                               AnyLayout(g.weights), Nhwc(g.dst), g.strides, g.dilation,
                               g.pad_lo, g.pad_hi, forward, UserScratchpad());
}

// One cached primitive with the reorder between the user's HWIO weights and its own layout.
struct Plan {
  dnnl::primitive primitive;
  memory::desc user_weights;    // HWIO as the caller holds it
  memory::desc kernel_weights;  // the layout the primitive wants
  memory::desc scratchpad;      // the primitive's scratchpad (allocated per call)
  memory::desc reorder_scratchpad;
  bool reorder = false;
  dnnl::reorder weights_reorder;  // user -> kernel (fwd, bwd data) or kernel -> user (bwd w)
};

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

std::shared_ptr<Plan> MakePlan(Kind kind, const Geometry& g) {
  auto plan = std::make_shared<Plan>();
  plan->user_weights = memory::desc(g.weights, dt::f32, tag::hwio);
  auto forward = ForwardDesc(g);
  if (kind == kForward) {
    plan->primitive = dnnl::convolution_forward(forward);
    plan->kernel_weights = forward.weights_desc();
    plan->scratchpad = forward.scratchpad_desc();
  } else if (kind == kBackwardData) {
    auto pd = BackwardDesc<dnnl::convolution_backward_data::primitive_desc>(g, forward);
    plan->primitive = dnnl::convolution_backward_data(pd);
    plan->kernel_weights = pd.weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = BackwardDesc<dnnl::convolution_backward_weights::primitive_desc>(g, forward);
    plan->primitive = dnnl::convolution_backward_weights(pd);
    plan->kernel_weights = pd.diff_weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
  }
  plan->reorder = plan->kernel_weights != plan->user_weights;
  if (plan->reorder) {
    auto pd = kind == kBackwardWeights
                  ? dnnl::reorder::primitive_desc(Engine(), plan->kernel_weights, Engine(),
                                                  plan->user_weights, UserScratchpad())
                  : dnnl::reorder::primitive_desc(Engine(), plan->user_weights, Engine(),
                                                  plan->kernel_weights, UserScratchpad());
    plan->weights_reorder = dnnl::reorder(pd);
    plan->reorder_scratchpad = pd.scratchpad_desc();
  }
  return plan;
}

std::shared_ptr<Plan> GetPlan(Kind kind, const Geometry& g) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  const std::string key = Key(kind, g);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(key);
  if (found != plans.end()) return found->second;
  auto plan = MakePlan(kind, g);
  plans.emplace(key, plan);
  return plan;
}

ffi::Error Run(Kind kind, const Geometry& g, void* src, void* weights, void* dst) {
  try {
    auto plan = GetPlan(kind, g);
    const dnnl::engine& engine = Engine();
    dnnl::stream stream(engine);
    memory user_weights(plan->user_weights, engine, weights);
    memory kernel_weights = user_weights;
    if (plan->reorder) kernel_weights = memory(plan->kernel_weights, engine);
    memory src_memory(Nhwc(g.src), engine, src);
    memory dst_memory(Nhwc(g.dst), engine, dst);
    memory scratchpad(plan->scratchpad, engine);
    auto reorder = [&](const memory& from, const memory& to) {
      memory reorder_scratchpad(plan->reorder_scratchpad, engine);
      plan->weights_reorder.execute(stream, {{DNNL_ARG_FROM, from},
                                             {DNNL_ARG_TO, to},
                                             {DNNL_ARG_SCRATCHPAD, reorder_scratchpad}});
    };
    if (kind == kForward) {
      if (plan->reorder) reorder(user_weights, kernel_weights);
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, src_memory},
                                       {DNNL_ARG_WEIGHTS, kernel_weights},
                                       {DNNL_ARG_DST, dst_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == kBackwardData) {
      if (plan->reorder) reorder(user_weights, kernel_weights);
      plan->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, src_memory},
                                       {DNNL_ARG_WEIGHTS, kernel_weights},
                                       {DNNL_ARG_DIFF_DST, dst_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, src_memory},
                                       {DNNL_ARG_DIFF_WEIGHTS, kernel_weights},
                                       {DNNL_ARG_DIFF_DST, dst_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (plan->reorder) reorder(kernel_weights, user_weights);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> padding_lo, ffi::Span<const int64_t> padding_hi,
                       ffi::Span<const int64_t> dilation) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), strides, padding_lo,
                        padding_hi, dilation);
  return Run(kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> strides,
                            ffi::Span<const int64_t> padding_lo,
                            ffi::Span<const int64_t> padding_hi,
                            ffi::Span<const int64_t> dilation) {
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, padding_lo,
                        padding_hi, dilation);
  return Run(kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, ffi::Span<const int64_t> strides,
                               ffi::Span<const int64_t> padding_lo,
                               ffi::Span<const int64_t> padding_hi,
                               ffi::Span<const int64_t> dilation) {
  auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, padding_lo,
                        padding_hi, dilation);
  return Run(kBackwardWeights, g, x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

}  // namespace

#define DATADIET_CONV_BINDING(...)                            \
  ffi::Ffi::Bind()                                            \
      .Arg<ffi::Buffer<ffi::F32>>()                           \
      .Arg<ffi::Buffer<ffi::F32>>()                           \
      .Ret<ffi::Buffer<ffi::F32>>()                           \
      .Attr<ffi::Span<const int64_t>>("strides")              \
      .Attr<ffi::Span<const int64_t>>("padding_lo")           \
      .Attr<ffi::Span<const int64_t>>("padding_hi")           \
      .Attr<ffi::Span<const int64_t>>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DatadietOnednnConvFwd, ConvForward, DATADIET_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DatadietOnednnConvBwdData, ConvBackwardData,
                              DATADIET_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DatadietOnednnConvBwdWeights, ConvBackwardWeights,
                              DATADIET_CONV_BINDING());
