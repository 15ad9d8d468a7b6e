"""Faster reverse rules for Conv, MaxPool, AveragePool and Relu, installed into onnx-ad while
artifacts are built.

onnx-ad's own rules are general but slow on CPU (measured on TCDCN, batch 64, 2 cores: the
train step took 9.2x the forward pass):
- its weight gradient is one Conv whose kernel is the whole output map (batch and channels
  swapped), which ONNX Runtime's im2col convolution runs badly, plus two large Transposes;
- its input gradient is a ConvTranspose (GEMM + col2im);
- its MaxPool adjoint recomputes the pooling with an Indices output and scatter-adds
  (ScatterND) into a zero tensor.

The rules here emit the same derivatives with cheaper standard ops, for the cases the two
networks use, and hand every other case back to onnx-ad's rule:
- Conv, group 1, 2-D, static shapes:
  weight: im2col by Slices (contiguous row blocks at stride 1, strided slices otherwise), then
  a batched MatMul with the output adjoint and a ReduceSum over the batch;
  input: onnx-ad's ConvTranspose;
  bias: ReduceSum over batch and space.
- MaxPool with kernel == stride, no padding, no dilation, floor mode: the adjoint goes to the
  elements equal to their window's maximum, divided by how many there are (a tie shares it,
  so the result is still a valid subgradient); rows and columns that no window covers get 0.
- AveragePool, stride 1: the adjoint of a window sum is a window sum, so it is one
  AveragePool (count_include_pad=1) of the adjoint scaled by kernel size / window count,
  instead of a grouped ConvTranspose with a kernel of ones.
- Relu: the mask read from the output (see relu_reverse).

All of them assume one seed direction (a scalar loss), which is what make_artifacts.py asks.
"""

import contextlib

import numpy as np

from onnx_ad import rules

_original = {}


def _squeeze_seed(ctx, grad, primal):
    return ctx.squeeze(ctx.full(grad, primal), [-1])


def _conv_fast_path(ctx, node):
    attrs, spatial = rules._conv_attributes(ctx, node)
    x, w = node.input[0], node.input[1]
    shape_x, shape_w, shape_y = (ctx.shapes.static(n) for n in (x, w, node.output[0]))
    if spatial != 2 or attrs["group"] != 1 or None in (shape_x, shape_w, shape_y):
        return None
    return attrs, list(shape_x), list(shape_w), list(shape_y)


def _strided_patches(ctx, x, shape_w, shape_y, attrs):
    """im2col for strided or dilated kernels: [B, C*k*k, H'*W'], one strided Slice per offset."""
    (_, _, kh, kw), (b, _, oh, ow) = shape_w, shape_y
    strides, dil = attrs["strides"], attrs["dilations"]
    pieces = []
    for i in range(kh):
        for j in range(kw):
            start = [i * dil[0], j * dil[1]]
            end = [start[0] + (oh - 1) * strides[0] + 1, start[1] + (ow - 1) * strides[1] + 1]
            piece = ctx.b.op("Slice", [x, ctx.b.ints(start), ctx.b.ints(end), ctx.b.ints([2, 3]),
                                       ctx.b.ints(strides)], stem="im2col_slice")
            pieces.append(ctx.unsqueeze(piece, [2]))
    patches = ctx.b.op("Concat", pieces, axis=2, stem="im2col")
    return ctx.b.op("Reshape", [patches, ctx.b.ints([b, -1, oh * ow])], stem="patches"), ow


def _row_patches(ctx, x, shape_w, shape_y, width):
    """im2col for stride 1 without per-row copies: [B, C*k*k, H'*Wp].

    Offset (i, j) of the kernel reads the flat input from i*Wp + j on, H'*Wp values long; the
    Wp - W' values per row past the real output columns are multiplied by zero columns of the
    padded output adjoint.  Each slice is one contiguous block per (image, channel)."""
    (_, _, kh, kw), (b, _, oh, _) = shape_w, shape_y
    flat = ctx.b.op("Reshape", [x, ctx.b.ints([b, -1, 1, (oh + kh) * width])], stem="im2col_flat")
    pieces = []
    for i in range(kh):
        for j in range(kw):
            start = i * width + j
            pieces.append(ctx.b.op("Slice", [flat, ctx.b.ints([start]), ctx.b.ints([start + oh * width]),
                                             ctx.b.ints([3])], stem="im2col_slice"))
    patches = pieces[0] if len(pieces) == 1 else ctx.b.op("Concat", pieces, axis=2, stem="im2col")
    return ctx.b.op("Reshape", [patches, ctx.b.ints([b, -1, oh * width])], stem="patches")



def _patch_gemm(ctx, patches, dy, batch, length, shape_w):
    """dW from im2col patches [B, C*k*k, L] and the output adjoint (L values per channel and
    image): one [C*k*k, L] x [L, O] MatMul per image, summed over the images."""
    o = shape_w[0]
    dy_t = ctx.b.op("Transpose", [ctx.b.op("Reshape", [dy, ctx.b.ints([batch, o, length])])], perm=[0, 2, 1], stem="dy_t")
    per_image = ctx.b.op("MatMul", [patches, dy_t], stem="dw_batch")  # [B, C*k*k, O]
    summed = ctx.reduce_sum(per_image, [0], keepdims=0)
    return ctx.b.op("Reshape", [ctx.b.op("Transpose", [summed], perm=[1, 0]), ctx.b.ints(list(shape_w))], stem="a_conv_weight")


def _im2col_weight_grad(ctx, x, dy, attrs, shape_x, shape_w, shape_y):
    """Stride 1, few input channels: im2col by contiguous row slices of the padded input (one
    extra zero row keeps the last slice inside it), one GEMM per image."""
    b, _, _, w = shape_x
    _, _, oh, ow = shape_y
    pads = attrs["pads"]
    x = ctx.b.op("Pad", [x, ctx.b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2] + 1, pads[3]])], stem="im2col_pad")
    width = w + pads[1] + pads[3]
    patches = _row_patches(ctx, x, shape_w, shape_y, width)
    if width != ow:
        dy = ctx.b.op("Pad", [dy, ctx.b.ints([0, 0, 0, 0, 0, 0, 0, width - ow])], stem="dy_wide")
    return _patch_gemm(ctx, patches, dy, b, oh * width, shape_w)


def _offset_weight_grad(ctx, x, dy, attrs, shape_x, shape_w, shape_y):
    """Stride 1, 32 or more input channels: one GEMM per kernel offset, no im2col tensor.

    Offset (i, j) of the kernel reads the flat padded input from i*Wp + j on, H'*Wp values
    long: one contiguous block per (image, channel), so dW[:, :, i, j] is one [O, L] x [L, C]
    MatMul per image, summed at once (the [B, O, C] products of one offset live only until
    their sum). The Wp - W' values per row past the real output columns meet zero columns of
    the padded adjoint; one extra zero row keeps the last block inside the tensor."""
    b, c, h, w = shape_x
    o, _, kh, kw = shape_w
    _, _, oh, ow = shape_y
    pads = attrs["pads"]
    width = w + pads[1] + pads[3]
    extra = 1 if kw > 1 else 0
    rows = h + pads[0] + pads[2] + extra
    if any(pads) or extra:
        x = ctx.b.op("Pad", [x, ctx.b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2] + extra, pads[3]])], stem="x_pad")
    flat_x = ctx.b.op("Reshape", [x, ctx.b.ints([b, c, rows * width])], stem="x_flat")
    if width != ow:
        dy = ctx.b.op("Pad", [dy, ctx.b.ints([0, 0, 0, 0, 0, 0, 0, width - ow])], stem="dy_wide")
    length = oh * width
    dy_3 = ctx.b.op("Reshape", [dy, ctx.b.ints([b, o, length])])
    per_offset = []
    for i in range(kh):
        for j in range(kw):
            start = i * width + j
            block = ctx.b.op("Slice", [flat_x, ctx.b.ints([start]), ctx.b.ints([start + length]), ctx.b.ints([2])], stem="x_block")
            product = ctx.b.op("MatMul", [dy_3, ctx.b.op("Transpose", [block], perm=[0, 2, 1])], stem="dw_offset")
            per_offset.append(ctx.unsqueeze(ctx.reduce_sum(product, [0], keepdims=0), [2]))
    stacked = per_offset[0] if len(per_offset) == 1 else ctx.b.op("Concat", per_offset, axis=2, stem="dw_offsets")
    return ctx.b.op("Reshape", [stacked, ctx.b.ints(list(shape_w))], stem="a_conv_weight")


def _pointwise_weight_grad(ctx, x, dy, shape_x, shape_w):
    """1x1, stride 1, no padding: dW = sum over images of dy[b] @ x[b]^T, no im2col at all.

    Per image, then summed: folding the batch into one GEMM needs two transposed copies of
    activations, which cost more than the [B, O, C] products they save."""
    b, c, h, w = shape_x
    o = shape_w[0]
    flat_dy = ctx.b.op("Reshape", [dy, ctx.b.ints([b, o, h * w])], stem="dy_flat")
    flat_x = ctx.b.op("Reshape", [x, ctx.b.ints([b, c, h * w])], stem="x_flat")
    per_image = ctx.b.op("MatMul", [flat_dy, ctx.b.op("Transpose", [flat_x], perm=[0, 2, 1])], stem="dw_batch")
    return ctx.b.op("Reshape", [ctx.reduce_sum(per_image, [0], keepdims=0), ctx.b.ints(list(shape_w))],
                    stem="a_conv_weight")


def _strided_weight_grad(ctx, x, dy, attrs, shape_x, shape_w, shape_y):
    """Strided or dilated kernels: strided-slice im2col, one GEMM per image."""
    pads = attrs["pads"]
    if any(pads):
        x = ctx.b.op("Pad", [x, ctx.b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])], stem="im2col_pad")
    patches, width = _strided_patches(ctx, x, shape_w, shape_y, attrs)
    return _patch_gemm(ctx, patches, dy, shape_x[0], shape_y[2] * width, shape_w)


# Below this many input channels a per-offset GEMM is too narrow ([O, L] x [L, C]) and one
# im2col GEMM per image ([C*k*k, L] x [L, O]) wins despite its copies (measured on the first
# layers of TCDCN and Cascade-CNN, C = 3 and 20: 1.1-1.5x faster); from 32 on (Cascade-CNN's
# 40, InceptionV3's 32-2048) the per-offset form is 2-25% faster and never materialises im2col.
OFFSET_MIN_CHANNELS = 32


def _conv_weight_grad(ctx, node, attrs, shape_x, shape_w, shape_y, dy):
    x = node.input[0]
    unit = attrs["strides"] == [1, 1] and attrs["dilations"] == [1, 1]
    if unit and shape_w[2:] == [1, 1] and not any(attrs["pads"]):
        dw = _pointwise_weight_grad(ctx, x, dy, shape_x, shape_w)
    elif unit and shape_x[1] >= OFFSET_MIN_CHANNELS:
        dw = _offset_weight_grad(ctx, x, dy, attrs, shape_x, shape_w, shape_y)
    elif unit:
        dw = _im2col_weight_grad(ctx, x, dy, attrs, shape_x, shape_w, shape_y)
    else:
        dw = _strided_weight_grad(ctx, x, dy, attrs, shape_x, shape_w, shape_y)
    return ctx.unsqueeze(dw, [-1])


def _flipped_conv_fits(attrs, shape_x, shape_w):
    """Whether the input gradient runs as a Conv of the adjoint with the flipped kernel.

    Measured per InceptionV3 layer at batch 8 on 2 cores (ONNX Runtime 1.31.1): for stride 1
    kernels larger than 1x1 on maps of 35x35 and up it beats ConvTranspose by 10-40% (its
    GEMM runs at the forward's speed; ConvTranspose adds col2im); on smaller maps and for
    1x1 kernels the two are within noise, or ConvTranspose wins, so it stays there."""
    (_, _, kh, kw), pads = shape_w, attrs["pads"]
    return (attrs["strides"] == [1, 1] and attrs["dilations"] == [1, 1] and (kh, kw) != (1, 1)
            and min(shape_x[2:]) >= 35 and max(pads[0], pads[2]) < kh and max(pads[1], pads[3]) < kw)


def _flipped_conv_input_grad(ctx, node, attrs, shape_w, dy):
    _, _, kh, kw = shape_w
    pads = attrs["pads"]
    flipped = ctx.b.op("Slice", [node.input[1], ctx.b.ints([-1, -1]), ctx.b.ints([-2**62, -2**62]),
                                 ctx.b.ints([2, 3]), ctx.b.ints([-1, -1])], stem="w_flipped")
    kernel = ctx.b.op("Transpose", [flipped], perm=[1, 0, 2, 3], stem="w_transposed")
    dx = ctx.b.op("Conv", [dy, kernel], pads=[kh - 1 - pads[0], kw - 1 - pads[1], kh - 1 - pads[2], kw - 1 - pads[3]],
                  stem="a_conv_flipped")
    return ctx.unsqueeze(dx, [-1])


def _conv_input_grad(ctx, node, grads):
    """onnx-ad's ConvTranspose, asked for the input only."""
    wanted = ctx.wanted
    ctx.wanted = {node.input[0]}
    try:
        return _original["Conv"](ctx, node, grads)[0]
    finally:
        ctx.wanted = wanted


def conv_reverse(ctx, node, grads):
    fast = _conv_fast_path(ctx, node)
    if fast is None:
        return _original["Conv"](ctx, node, grads)
    attrs, shape_x, shape_w, shape_y = fast
    dy = _squeeze_seed(ctx, grads[0], node.output[0])
    result = [None, None]
    if ctx.asked_for(node.input[0]):
        if _flipped_conv_fits(attrs, shape_x, shape_w):
            result[0] = _flipped_conv_input_grad(ctx, node, attrs, shape_w, dy)
        else:
            result[0] = _conv_input_grad(ctx, node, grads)
    if ctx.asked_for(node.input[1]):
        result[1] = _conv_weight_grad(ctx, node, attrs, shape_x, shape_w, shape_y, dy)
    if len(node.input) > 2 and node.input[2]:
        bias = None
        if ctx.asked_for(node.input[2]):
            bias = ctx.unsqueeze(ctx.reduce_sum(dy, [0, 2, 3], keepdims=0), [-1])
        result.append(bias)
    return result


def _pool_window(ctx, node):
    """Kernel, strides, pads and the static input and output shapes of a 2-D pool without
    dilation or ceil mode; None for any other pool (onnx-ad's rule takes it)."""
    attrs, spatial = rules._pool_attributes(ctx, node, reverse=False)
    shape_x, shape_y = ctx.shapes.static(node.input[0]), ctx.shapes.static(node.output[0])
    if (spatial != 2 or attrs["dilations"] != [1, 1] or rules.attribute(node, "ceil_mode", 0)
            or shape_x is None or shape_y is None):
        return None
    return dict(kernel=list(attrs["kernel_shape"]), strides=list(attrs["strides"]), pads=list(attrs["pads"]),
                x=list(shape_x), y=list(shape_y))


def _upsample(ctx, value, shape):
    """Nearest-neighbour repeat of each window value over its window (Resize, floor).  An
    Expand of [B, C, H', 1, W', 1] to [B, C, H', kh, W', kw] does the same and measured 1.3-1.5x
    slower train steps on TCDCN and Cascade-CNN: ONNX Runtime broadcasts element by element."""
    return ctx.b.op("Resize", [value, "", "", ctx.b.ints(shape)], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                    stem="pool_upsample")


def _tiled_max_pool_adjoint(ctx, node, window, dy):
    """Kernel == stride, no padding: the windows tile the input."""
    (kh, kw), (b, c, h, w) = window["kernel"], window["x"]
    oh, ow = h // kh, w // kw
    x, y = node.input[0], node.output[0]
    covered_shape = [b, c, oh * kh, ow * kw]
    covered = x if (oh * kh, ow * kw) == (h, w) else ctx.slice(x, [0, 0], covered_shape[2:], [2, 3])
    is_max = ctx.b.op("Cast", [ctx.b.op("Equal", [covered, _upsample(ctx, y, covered_shape)])],
                      to=ctx.dtype(x), stem="is_max")
    # ties per window = window mean * window size
    ties = ctx.b.op("AveragePool", [is_max], kernel_shape=[kh, kw], strides=[kh, kw], stem="pool_ties")
    share = ctx.b.op("Div", [dy, ctx.b.op("Mul", [ties, ctx.constant(float(kh * kw), ctx.dtype(x))])], stem="pool_share")
    spread = ctx.b.op("Mul", [is_max, _upsample(ctx, share, covered_shape)], stem="a_maxpool")
    if (oh * kh, ow * kw) != (h, w):
        spread = ctx.b.op("Pad", [spread, ctx.b.ints([0, 0, 0, 0, 0, 0, h - oh * kh, w - ow * kw])])
    return spread


def max_pool_reverse(ctx, node, grads):
    window = _pool_window(ctx, node)
    if window is None:
        return _original["MaxPool"](ctx, node, grads)
    kernel, strides, pads = window["kernel"], window["strides"], window["pads"]
    if kernel != strides or any(pads):
        # Overlapping windows (InceptionV3's 3x3/2) stay with MaxPool-with-Indices + ScatterND:
        # a mask per kernel offset needs one strided Slice each, which ONNX Runtime copies
        # element by element (24 ms per offset on InceptionV3's first pool at batch 8, against
        # about 100 ms for the whole ScatterND adjoint), plus a DepthToSpace to interleave.
        return _original["MaxPool"](ctx, node, grads)
    dx = _tiled_max_pool_adjoint(ctx, node, window, _squeeze_seed(ctx, grads[0], node.output[0]))
    return [ctx.unsqueeze(dx, [-1])] + [None] * (len(node.input) - 1)


def average_pool_reverse(ctx, node, grads):
    """Stride 1: input element i receives the adjoint / count of every window that holds it,
    the windows o = i + top - k + 1 .. i + top.  That is itself a window sum, with the padding
    mirrored (k - 1 - pad): one AveragePool (count_include_pad=1) of the adjoint scaled by
    k*k / count, the count per window being a constant of the static shapes."""
    window = _pool_window(ctx, node)
    if window is None or window["strides"] != [1, 1] or any(p >= k for p, k in zip(window["pads"], window["kernel"] * 2)):
        return _original["AveragePool"](ctx, node, grads)
    (kh, kw), (top, left, bottom, right) = window["kernel"], window["pads"]
    (_, _, h, w), (_, _, oh, ow) = window["x"], window["y"]
    if rules.attribute(node, "count_include_pad", 0):
        count = np.full((oh, ow), float(kh * kw))
    else:
        rows = [min(o - top + kh, h) - max(o - top, 0) for o in range(oh)]
        cols = [min(o - left + kw, w) - max(o - left, 0) for o in range(ow)]
        count = np.outer(rows, cols).astype(float)
    dtype = ctx.dtype(node.input[0])
    scaled = ctx.b.op("Mul", [_squeeze_seed(ctx, grads[0], node.output[0]), ctx.b.constant(kh * kw / count, dtype, [1, 1, oh, ow])],
                      stem="avgpool_scaled")
    spread = ctx.b.op("AveragePool", [scaled], kernel_shape=[kh, kw], count_include_pad=1, stem="avgpool_spread",
                      pads=[kh - 1 - top, kw - 1 - left, kh - 1 - bottom, kw - 1 - right])
    return [ctx.unsqueeze(spread, [-1])] + [None] * (len(node.input) - 1)


def relu_reverse(ctx, node, grads):
    """dx = dy * sign(y): the derivative read from the output (Relu'(0) = 0 as in onnx-ad).

    onnx-ad's rule reads the input (Greater + Cast + Mul); reading the output instead leaves
    the producing Conv with one consumer, so ONNX Runtime fuses Conv + Relu in the training
    graph's forward as it does for inference, and the mask is one op, not two.  (A Where on
    the Greater instead of Cast + Mul took 985 ms per InceptionV3 micro-batch of 8, against
    about 40 ms: ONNX Runtime's broadcasting Where runs element by element.)"""
    y = node.output[0]
    positive = ctx.b.op("Greater", [y, ctx.constant(0.0, ctx.dtype(y))], stem="relu_positive")
    mask = ctx.b.op("Cast", [positive], to=ctx.dtype(y), stem="relu_mask")
    return [ctx.b.op("Mul", [grads[0], ctx.lift(mask)], stem="a_" + node.input[0])]


FAST = {"Conv": conv_reverse, "MaxPool": max_pool_reverse, "AveragePool": average_pool_reverse, "Relu": relu_reverse}


@contextlib.contextmanager
def installed(enabled=True):
    """Use the fast rules inside the block (onnx-ad's own ones when `enabled` is False)."""
    if not enabled:
        yield
        return
    for op, rule in FAST.items():
        _original[op] = rules.REVERSE[op]
        rules.REVERSE[op] = rule
    try:
        yield
    finally:
        for op in FAST:
            rules.REVERSE[op] = _original.pop(op)
