#!/usr/bin/env python3
"""Builds the ONNX test fixtures in tests/fixtures/onnx/ (committed; CI does not run this).

Good models are built with the `onnx` helper API in the shapes PyTorch's and tf2onnx's
exporters emit (including PyTorch's Shape/Gather/Unsqueeze/Concat/Reshape flatten chain and
Gemm with transB=1); their reference outputs come from onnxruntime on a fixed input and are
stored beside them as little-endian f32 (`NAME.in.f32`, `NAME.out.f32`).

Bad models (bad/) are the hostile or broken files the importer must refuse cleanly.

    pip install onnx onnxruntime numpy
    python3 scripts/make_onnx_fixtures.py
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "onnx")
BAD = os.path.join(OUT, "bad")
rng = np.random.default_rng(7)


def w(name, *shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = scale or (2.0 / fan_in) ** 0.5
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def bn(prefix, c):
    return [
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.bias"),
        numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.running_mean"),
        numpy_helper.from_array((0.5 + rng.random(c)).astype(np.float32), f"{prefix}.running_var"),
    ]


def const(name, value, dtype=np.int64):
    return helper.make_node("Constant", [], [name], name=f"/{name}/Constant", value=numpy_helper.from_array(np.array(value, dtype=dtype), name))


def torch_flatten(x, out, tag):
    """torch.flatten / x.view(x.size(0), -1) as torch.onnx.export writes it (dynamic batch)."""
    return [
        helper.make_node("Shape", [x], [f"/{tag}/Shape_output_0"], name=f"/{tag}/Shape"),
        const(f"{tag}_c0", 0),
        helper.make_node("Gather", [f"/{tag}/Shape_output_0", f"{tag}_c0"], [f"/{tag}/Gather_output_0"], name=f"/{tag}/Gather", axis=0),
        const(f"{tag}_axes", [0]),
        helper.make_node("Unsqueeze", [f"/{tag}/Gather_output_0", f"{tag}_axes"], [f"/{tag}/Unsqueeze_output_0"], name=f"/{tag}/Unsqueeze"),
        const(f"{tag}_minus1", [-1]),
        helper.make_node("Concat", [f"/{tag}/Unsqueeze_output_0", f"{tag}_minus1"], [f"/{tag}/Concat_output_0"], name=f"/{tag}/Concat", axis=0),
        helper.make_node("Reshape", [x, f"/{tag}/Concat_output_0"], [out], name=f"/{tag}/Reshape"),
    ]


def model(nodes, inits, inp, out, name, opset=13):
    g = helper.make_graph(nodes, name, [inp], [out], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch", producer_version="2.5.0")
    m.ir_version = 8
    return m


def tensor_in(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def lenet():
    nodes = [
        helper.make_node("Conv", ["input.1", "conv1.weight", "conv1.bias"], ["/conv1/Conv_output_0"], name="/conv1/Conv", kernel_shape=[5, 5], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
        helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu1/Relu_output_0"], name="/relu1/Relu"),
        helper.make_node("MaxPool", ["/relu1/Relu_output_0"], ["/pool1/MaxPool_output_0"], name="/pool1/MaxPool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0),
        helper.make_node("Conv", ["/pool1/MaxPool_output_0", "conv2.weight", "conv2.bias"], ["/conv2/Conv_output_0"], name="/conv2/Conv", kernel_shape=[5, 5], strides=[1, 1], pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["/conv2/Conv_output_0"], ["/relu2/Relu_output_0"], name="/relu2/Relu"),
        helper.make_node("MaxPool", ["/relu2/Relu_output_0"], ["/pool2/MaxPool_output_0"], name="/pool2/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    nodes += torch_flatten("/pool2/MaxPool_output_0", "/Reshape_output_0", "flatten")
    nodes += [
        helper.make_node("Gemm", ["/Reshape_output_0", "fc1.weight", "fc1.bias"], ["/fc1/Gemm_output_0"], name="/fc1/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/relu3/Relu_output_0"], name="/relu3/Relu"),
        helper.make_node("Gemm", ["/relu3/Relu_output_0", "fc2.weight", "fc2.bias"], ["logits"], name="/fc2/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    inits = [w("conv1.weight", 8, 1, 5, 5), w("conv1.bias", 8, scale=0.1), w("conv2.weight", 16, 8, 5, 5), w("conv2.bias", 16, scale=0.1), w("fc1.weight", 32, 256), w("fc1.bias", 32, scale=0.1), w("fc2.weight", 10, 32), w("fc2.bias", 10, scale=0.1)]
    return model(nodes, inits, tensor_in("input.1", ["batch", 1, 28, 28]), tensor_in("logits", ["batch", 10]), "lenet"), (2, 1, 28, 28)


def resnet_block():
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "stem.weight"], ["s"], name="/stem/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["s", "bn0.weight", "bn0.bias", "bn0.running_mean", "bn0.running_var"], ["s_bn"], name="/bn0/BatchNormalization", epsilon=1e-5, momentum=0.9),
        helper.make_node("Relu", ["s_bn"], ["s_relu"], name="/relu0/Relu"),
        helper.make_node("Conv", ["s_relu", "layer1.0.conv1.weight"], ["a"], name="/layer1/layer1.0/conv1/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var"], ["a_bn"], name="/layer1/layer1.0/bn1/BatchNormalization", epsilon=1e-5),
        helper.make_node("Relu", ["a_bn"], ["a_relu"], name="/layer1/layer1.0/relu/Relu"),
        helper.make_node("Conv", ["a_relu", "layer1.0.conv2.weight"], ["b"], name="/layer1/layer1.0/conv2/Conv", kernel_shape=[3, 3], pads=[2, 2, 2, 2], dilations=[2, 2], group=2),
        helper.make_node("BatchNormalization", ["b", "layer1.0.bn2.weight", "layer1.0.bn2.bias", "layer1.0.bn2.running_mean", "layer1.0.bn2.running_var"], ["b_bn"], name="/layer1/layer1.0/bn2/BatchNormalization", epsilon=1e-5),
        helper.make_node("Add", ["b_bn", "s_relu"], ["sum"], name="/layer1/layer1.0/Add"),
        helper.make_node("Relu", ["sum"], ["block"], name="/layer1/layer1.0/relu_1/Relu"),
        helper.make_node("AveragePool", ["block"], ["ap"], name="/pool/AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=0, count_include_pad=0),
        helper.make_node("Conv", ["ap", "head.weight", "head.bias"], ["h"], name="/head/Conv", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["h_relu"], name="/head/Relu"),
        helper.make_node("GlobalAveragePool", ["h_relu"], ["gap"], name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["fc"], name="/fc/Gemm", alpha=0.5, beta=2.0, transB=0),
        helper.make_node("Softmax", ["fc"], ["probabilities"], name="/Softmax", axis=1),
    ]
    inits = [w("stem.weight", c, 3, 3, 3)] + bn("bn0", c) + [w("layer1.0.conv1.weight", c, c, 3, 3)] + bn("layer1.0.bn1", c) + [w("layer1.0.conv2.weight", c, c // 2, 3, 3)] + bn("layer1.0.bn2", c)
    inits += [w("head.weight", 12, c, 3, 3), w("head.bias", 12, scale=0.1), w("fc.weight", 12, 5), w("fc.bias", 5, scale=0.1)]
    return model(nodes, inits, tensor_in("x", ["N", 3, 16, 16]), tensor_in("probabilities", ["N", 5]), "resnet_block"), (2, 3, 16, 16)


def branches():
    nodes = [
        helper.make_node("Conv", ["image", "left.weight", "left.bias"], ["l"], name="left_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["l"], ["l_act"], name="left_act", alpha=0.2),
        helper.make_node("Conv", ["image", "right.weight", "right.bias"], ["r"], name="right_conv", kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["r"], ["r_act"], name="right_act"),
        helper.make_node("Concat", ["l_act", "r_act"], ["cat"], name="cat", axis=1),
        helper.make_node("Tanh", ["cat"], ["t"], name="tanh"),
        helper.make_node("MaxPool", ["t"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Dropout", ["p"], ["d"], name="dropout"),
        helper.make_node("Identity", ["d"], ["i"], name="identity"),
        helper.make_node("Flatten", ["i"], ["f"], name="flatten", axis=1),
        helper.make_node("MatMul", ["f", "fc.weight_t"], ["mm"], name="fc_matmul"),
        helper.make_node("Add", ["mm", "fc.bias"], ["scores"], name="fc_add"),
    ]
    inits = [w("left.weight", 6, 2, 3, 3), w("left.bias", 6, scale=0.1), w("right.weight", 4, 2, 1, 1), w("right.bias", 4, scale=0.1), w("fc.weight_t", 10 * 7 * 7, 7), w("fc.bias", 7, scale=0.1)]
    return model(nodes, inits, tensor_in("image", [None, 2, 12, 12]), tensor_in("scores", [None, 7]), "branches"), (3, 2, 12, 12)


def nhwc_tf():
    nodes = [
        helper.make_node("Transpose", ["input_1:0"], ["nchw"], name="StatefulPartitionedCall/model/conv/Conv2D__6", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv/kernel", "conv/bias"], ["c"], name="StatefulPartitionedCall/model/conv/BiasAdd", kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c"], ["c_relu"], name="StatefulPartitionedCall/model/conv/Relu"),
        helper.make_node("GlobalAveragePool", ["c_relu"], ["gap"], name="StatefulPartitionedCall/model/gap"),
        const("squeeze_axes", [2, 3]),
        helper.make_node("Squeeze", ["gap", "squeeze_axes"], ["sq"], name="StatefulPartitionedCall/model/squeeze"),
        helper.make_node("MatMul", ["sq", "dense/kernel"], ["mm"], name="StatefulPartitionedCall/model/dense/MatMul"),
        helper.make_node("Add", ["mm", "dense/bias"], ["logits"], name="StatefulPartitionedCall/model/dense/BiasAdd"),
        helper.make_node("Softmax", ["logits"], ["dense"], name="StatefulPartitionedCall/model/dense/Softmax", axis=-1),
    ]
    inits = [w("conv/kernel", 6, 3, 3, 3), w("conv/bias", 6, scale=0.1), w("dense/kernel", 6, 4), w("dense/bias", 4, scale=0.1)]
    m = model(nodes, inits, tensor_in("input_1:0", ["unk__1", 10, 10, 3]), tensor_in("dense", ["unk__1", 4]), "nhwc_tf")
    m.producer_name = "tf2onnx"
    return m, (2, 10, 10, 3)


def linear_only():
    """A classifier with no hidden layer (no BatchNorm, convolution or hidden linear layer):
    nothing for a neuron-level defense to mask."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    inits = [w("fc.weight", 10, 28 * 28), w("fc.bias", 10, scale=0.1)]
    return model(nodes, inits, tensor_in("input", ["N", 1, 28, 28]), tensor_in("logits", ["N", 10]), "linear_only"), (2, 1, 28, 28)


def strided_flatten():
    """The default exporter's flatten of a feature map by as_strided: the whole batch flattened,
    then gathered back at Range(0, batch) * 64 + arange(64), one row of 64 values per sample."""
    i64 = lambda n, v: numpy_helper.from_array(np.array(v, dtype=np.int64), n)  # noqa: E731
    nodes = [
        helper.make_node("Relu", ["input"], ["r"]),
        helper.make_node("Shape", ["input"], ["shape"], end=1), helper.make_node("Squeeze", ["shape"], ["b"]),
        helper.make_node("Reshape", ["r", "minus1"], ["flat"]),
        helper.make_node("Range", ["zero", "b", "one"], ["rows"]), helper.make_node("Mul", ["rows", "per"], ["starts"]),
        helper.make_node("Unsqueeze", ["starts", "axis1"], ["col"]), helper.make_node("Add", ["col", "offsets"], ["idx"]),
        helper.make_node("Gather", ["flat", "idx"], ["rowwise"], axis=0),
        helper.make_node("Gemm", ["rowwise", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    inits = [i64("minus1", [-1]), i64("zero", 0), i64("one", 1), i64("per", 64), i64("axis1", [1]),
             i64("offsets", np.arange(64).reshape(1, 64)), w("fc.weight", 3, 64), w("fc.bias", 3, scale=0.1)]
    m = model(nodes, inits, tensor_in("input", ["N", 4, 4, 4]), tensor_in("logits", ["N", 3]), "strided_flatten", opset=18)
    return m, (3, 4, 4, 4)


def save_good(name, m, shape):
    onnx.checker.check_model(m)
    path = os.path.join(OUT, f"{name}.onnx")
    onnx.save(m, path)
    x = rng.standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32)
    x.tofile(os.path.join(OUT, f"{name}.in.f32"))
    y.tofile(os.path.join(OUT, f"{name}.out.f32"))
    print(f"{name}: input {x.shape} output {y.shape}")


def save_bad(name, m_or_bytes):
    path = os.path.join(BAD, f"{name}.onnx")
    with open(path, "wb") as f:
        f.write(m_or_bytes if isinstance(m_or_bytes, bytes) else m_or_bytes.SerializeToString())


def bad_corpus(good):
    raw = good.SerializeToString()
    save_bad("truncated", raw[: len(raw) // 2])
    save_bad("wrong_magic", b"PK\x03\x04" + bytes(range(256)) * 4)
    save_bad("empty", b"")
    save_bad("no_graph", onnx.ModelProto(ir_version=8).SerializeToString())

    def variant(edit):
        m = onnx.ModelProto()
        m.CopyFrom(good)
        edit(m)
        return m

    def init(m, name):
        return next(t for t in m.graph.initializer if t.name == name)

    def huge(m):
        t = init(m, "conv1.weight")
        del t.dims[:]
        t.dims.extend([1 << 20, 1 << 20, 1 << 10])
    save_bad("huge_dims", variant(huge))

    def negative(m):
        t = init(m, "conv1.bias")
        del t.dims[:]
        t.dims.extend([-8])
    save_bad("negative_dim", variant(negative))

    def short(m):
        t = init(m, "fc1.weight")
        t.raw_data = t.raw_data[:100]
    save_bad("data_length_mismatch", variant(short))

    def external(location):
        def edit(m):
            t = init(m, "fc2.weight")
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in [("location", location), ("offset", "0"), ("length", "1280")]:
                e = t.external_data.add()
                e.key, e.value = k, v
        return edit
    save_bad("external_escape", variant(external("../../etc/passwd")))
    save_bad("external_absolute", variant(external("/etc/passwd")))

    def nan(m):
        t = init(m, "conv2.weight")
        a = numpy_helper.to_array(t).copy()
        a.flat[17] = np.nan
        t.CopyFrom(numpy_helper.from_array(a, "conv2.weight"))
    save_bad("nan_weights", variant(nan))

    def inf(m):
        t = init(m, "fc2.bias")
        a = numpy_helper.to_array(t).copy()
        a[3] = np.inf
        t.CopyFrom(numpy_helper.from_array(a, "fc2.bias"))
    save_bad("inf_weights", variant(inf))

    def missing(m):
        keep = [t for t in m.graph.initializer if t.name != "conv2.weight"]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
    save_bad("missing_initializer", variant(missing))

    def unsupported(m):
        m.graph.node[1].op_type = "Resize"
        m.graph.node[4].op_type = "LSTM"
    save_bad("unsupported_ops", variant(unsupported))

    def custom(m):
        m.graph.node[1].domain = "com.microsoft"
        m.graph.node[1].op_type = "FusedRelu"
    save_bad("custom_domain", variant(custom))

    def cyclic(m):
        # conv1 reads relu2's output, which depends on conv1.
        m.graph.node[0].input[0] = "/relu2/Relu_output_0"
    save_bad("cyclic", variant(cyclic))

    def duplicate(m):
        m.graph.node[2].output[0] = "/relu1/Relu_output_0"
    save_bad("duplicate_output", variant(duplicate))

    def string_tensor(m):
        m.graph.initializer.append(helper.make_tensor("labels", TensorProto.STRING, [2], [b"cat", b"dog"]))
    save_bad("string_tensor", variant(string_tensor))

    def asymmetric(m):
        a = next(a for a in m.graph.node[0].attribute if a.name == "pads")
        del a.ints[:]
        a.ints.extend([0, 0, 1, 1])
    save_bad("asymmetric_pads", variant(asymmetric))

    def two_inputs(m):
        m.graph.input.append(tensor_in("extra", ["batch", 10]))
    save_bad("two_inputs", variant(two_inputs))

    def dangling_output(m):
        m.graph.output[0].name = "nowhere"
    save_bad("dangling_output", variant(dangling_output))
    new_op_corpus()


def new_op_corpus():
    """The mobile and ConvNeXt operators used against the importer: bounds that are not an
    interval, a view that is not a channel shuffle, parameters that do not fit."""
    def tiny(name, nodes, inits, batch="batch"):
        g = helper.make_graph(nodes, name, [tensor_in("input", [batch, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
        save_bad(name, helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    i64 = lambda n, v: numpy_helper.from_array(np.array(v, dtype=np.int64), n)  # noqa: E731
    f32 = lambda n, v: numpy_helper.from_array(np.array(v, dtype=np.float32), n)  # noqa: E731
    tiny("clip_inverted", [helper.make_node("Clip", ["input", "lo", "hi"], ["y"])], [f32("lo", 6.0), f32("hi", 0.0)])
    tiny("hardsigmoid_inf", [helper.make_node("HardSigmoid", ["input"], ["y"], alpha=float("inf"))], [])
    tiny("split_huge", [helper.make_node("Split", ["input", "s"], ["a", "y"], axis=1)], [i64("s", [1 << 40, 2])])
    tiny("split_axis_out_of_range", [helper.make_node("Split", ["input", "s"], ["a", "y"], axis=7)], [i64("s", [2, 2])])
    tiny("slice_empty", [helper.make_node("Slice", ["input", "st", "en", "ax"], ["y"])], [i64("st", [3]), i64("en", [1]), i64("ax", [1])])
    tiny("shuffle_bad_groups", [helper.make_node("Reshape", ["input", "s1"], ["v"]), helper.make_node("Transpose", ["v"], ["t"], perm=[0, 2, 1, 3, 4]),
                                helper.make_node("Reshape", ["t", "s2"], ["y"])], [i64("s1", [0, 3, 1, 4, 4]), i64("s2", [0, 4, 4, 4])])
    # PyTorch's dynamo export of as_strided: the whole batch flattened, gathered back at indices
    # computed from the batch size (Range over it, times the per-sample count, plus offsets).
    def strided(name, offsets, scale=1, batch_dim="batch"):
        batch = [helper.make_node("Shape", ["input"], ["shape"], end=1), helper.make_node("Squeeze", ["shape"], ["b"])]
        tiny(name, batch + [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Reshape", ["p", "minus1"], ["flat"]),
                            helper.make_node("Mul", ["b", "scale"], ["limit"]), helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
                            helper.make_node("Mul", ["r", "four"], ["rs"]), helper.make_node("Unsqueeze", ["rs", "axes"], ["ru"]),
                            helper.make_node("Add", ["ru", "off"], ["idx"]), helper.make_node("Gather", ["flat", "idx"], ["y"], axis=0)],
             [i64("minus1", [-1]), i64("zero", 0), i64("one", 1), i64("scale", scale), i64("four", 4), i64("axes", [1, 2, 3]),
              i64("off", np.array(offsets).reshape(1, 4, 1, 1))], batch_dim)
    strided("strided_gather_out_of_order", [3, 2, 1, 0])
    strided("strided_gather_huge_range", [0, 1, 2, 3], scale=1 << 40)
    strided("strided_gather_huge_batch", [0, 1, 2, 3], batch_dim=1 << 40)
    tiny("layernorm_wrong_len", [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 2, 3, 1]),
                                 helper.make_node("LayerNormalization", ["t", "g", "b"], ["y"], axis=-1)], [f32("g", [1.0] * 7), f32("b", [0.0] * 7)])


if __name__ == "__main__":
    os.makedirs(BAD, exist_ok=True)
    good = None
    for name, make in [("lenet_torch", lenet), ("resnet_block", resnet_block), ("branches", branches), ("nhwc_tf", nhwc_tf)]:
        m, shape = make()
        save_good(name, m, shape)
        if name == "lenet_torch":
            good = m
    bad_corpus(good)
    # A model with one tensor in an external file beside it (allowed: inside the folder).
    ext = os.path.join(OUT, "external")
    os.makedirs(ext, exist_ok=True)
    m = onnx.ModelProto()
    m.CopyFrom(good)
    t = next(t for t in m.graph.initializer if t.name == "fc2.weight")
    with open(os.path.join(ext, "weights.bin"), "wb") as f:
        f.write(t.raw_data)
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in [("location", "weights.bin"), ("offset", "0"), ("length", str(n))]:
        e = t.external_data.add()
        e.key, e.value = k, v
    with open(os.path.join(ext, "model.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    # Appended last so the fixtures above keep their random weights.
    m, shape = linear_only()
    save_good("linear_only", m, shape)
    m, shape = strided_flatten()
    save_good("strided_flatten", m, shape)
    total = sum(os.path.getsize(os.path.join(d, f)) for d in (OUT, BAD, os.path.join(OUT, "external")) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
    print(f"fixtures: {total} bytes")
