"""Faster reverse rules for Conv and MaxPool, installed into onnx-ad while artifacts are built.

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

All of them assume one seed direction (a scalar loss), which is what make_artifacts.py asks.
"""

import contextlib

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


def _conv_weight_grad(ctx, node, attrs, shape_x, shape_w, shape_y, dy):
    b, _, h, w = shape_x
    o, c, kh, kw = shape_w
    _, _, oh, ow = shape_y
    pads = attrs["pads"]
    unit = attrs["strides"] == [1, 1] and attrs["dilations"] == [1, 1]
    # one extra zero row at the bottom keeps the last row-patch slice inside the tensor
    bottom = pads[2] + (1 if unit else 0)
    x = node.input[0]
    if any(pads) or bottom:
        x = ctx.b.op("Pad", [x, ctx.b.ints([0, 0, pads[0], pads[1], 0, 0, bottom, pads[3]])],
                     stem="im2col_pad")
    if unit:
        width = w + pads[1] + pads[3]
        patches = _row_patches(ctx, x, shape_w, shape_y, width)
        if width != ow:
            dy = ctx.b.op("Pad", [dy, ctx.b.ints([0, 0, 0, 0, 0, 0, 0, width - ow])], stem="dy_wide")
    else:
        patches, width = _strided_patches(ctx, x, shape_w, shape_y, attrs)
    dy_t = ctx.b.op("Transpose", [ctx.b.op("Reshape", [dy, ctx.b.ints([b, o, oh * width])])],
                    perm=[0, 2, 1], stem="dy_t")
    per_image = ctx.b.op("MatMul", [patches, dy_t], stem="dw_batch")  # [B, C*k*k, O]
    summed = ctx.reduce_sum(per_image, [0], keepdims=0)
    dw = ctx.b.op("Reshape", [ctx.b.op("Transpose", [summed], perm=[1, 0]),
                              ctx.b.ints([o, c, kh, kw])], stem="a_conv_weight")
    return ctx.unsqueeze(dw, [-1])


def _conv_input_grad(ctx, node, grads):
    """onnx-ad's ConvTranspose, asked for the input only (it beat a Conv with the flipped
    kernel, 70 ms vs 130 ms, since that kernel is computed and cannot be pre-packed)."""
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
        result[0] = _conv_input_grad(ctx, node, grads)
    if ctx.asked_for(node.input[1]):
        result[1] = _conv_weight_grad(ctx, node, attrs, shape_x, shape_w, shape_y, dy)
    if len(node.input) > 2 and node.input[2]:
        bias = None
        if ctx.asked_for(node.input[2]):
            bias = ctx.unsqueeze(ctx.reduce_sum(dy, [0, 2, 3], keepdims=0), [-1])
        result.append(bias)
    return result


def _pool_fast_path(ctx, node):
    attrs, spatial = rules._pool_attributes(ctx, node, reverse=False)
    shape_x = ctx.shapes.static(node.input[0])
    simple = (spatial == 2 and attrs["kernel_shape"] == attrs["strides"] and not any(attrs["pads"])
              and attrs["dilations"] == [1, 1] and not rules.attribute(node, "ceil_mode", 0)
              and shape_x is not None)
    return (list(attrs["kernel_shape"]), list(shape_x)) if simple else None


def _upsample(ctx, value, shape):
    """Nearest-neighbour repeat of each window value over its window (Resize, floor)."""
    return ctx.b.op("Resize", [value, "", "", ctx.b.ints(shape)], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                    stem="pool_upsample")


def max_pool_reverse(ctx, node, grads):
    fast = _pool_fast_path(ctx, node)
    if fast is None:
        return _original["MaxPool"](ctx, node, grads)
    (kh, kw), (b, c, h, w) = fast
    oh, ow = h // kh, w // kw
    x, y = node.input[0], node.output[0]
    covered_shape = [b, c, oh * kh, ow * kw]
    covered = x if (oh * kh, ow * kw) == (h, w) else ctx.slice(x, [0, 0], covered_shape[2:], [2, 3])
    is_max = ctx.b.op("Cast", [ctx.b.op("Equal", [covered, _upsample(ctx, y, covered_shape)])],
                      to=ctx.dtype(x), stem="is_max")
    # ties per window = window mean * window size
    ties = ctx.b.op("AveragePool", [is_max], kernel_shape=[kh, kw], strides=[kh, kw], stem="pool_ties")
    share = ctx.b.op("Div", [_squeeze_seed(ctx, grads[0], y),
                             ctx.b.op("Mul", [ties, ctx.constant(float(kh * kw), ctx.dtype(x))])],
                     stem="pool_share")
    spread = ctx.b.op("Mul", [is_max, _upsample(ctx, share, covered_shape)], stem="a_maxpool")
    if (oh * kh, ow * kw) != (h, w):
        spread = ctx.b.op("Pad", [spread, ctx.b.ints([0, 0, 0, 0, 0, 0, h - oh * kh, w - ow * kw])])
    return [ctx.unsqueeze(spread, [-1])] + [None] * (len(node.input) - 1)


FAST = {"Conv": conv_reverse, "MaxPool": max_pool_reverse}


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
