"""The CIFAR residual families researchers ablate: ``resnet_cifar``, ``wrn`` and ``resnet18k``.

* ``resnet_cifar``: He et al. 2015 (arXiv:1512.03385), sec. 4.2, depth 6n+2, shortcut A or B.
* ``wrn``: Zagoruyko & Komodakis 2016 (arXiv:1605.07146), WRN-d-k, depth 6N+4, width k.
* ``resnet18k``: Nakkiran et al. 2019 (arXiv:1912.02292), PreAct ResNet-18 at widths k, 2k, 4k, 8k.

Each builder checks its depth rule and raises ``ValueError("<model> depth=D: depth must be ...")``,
one line, before building anything. Convolutions have no bias; 3x3 convolutions pad 1 on each side
(PyTorch's layout, so weights port one to one); the classifier is ``Dense(keep_width=True)``.
"""

from __future__ import annotations

import operator

from jaxcnn.combinators import PreActResidual, Residual, Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import BatchNorm, Conv, Dense, Dropout, GlobalAvgPool, Projection, ReLU, SubsamplePad
from jaxcnn.models.registry import register_model
from jaxcnn.transforms import round_channels, scale_width


def check_depth(model: str, depth: object, step: int, offset: int, smallest: int, examples: str) -> int:
    """``depth`` as an int of the form ``step * n + offset`` (n >= 1, depth >= smallest), else one-line ValueError."""
    rule = f"depth must be {step}n+{offset}"
    try:
        if isinstance(depth, bool):
            raise TypeError
        d = operator.index(depth)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{model} depth={depth!r}: {rule}, an integer ({examples})") from None
    if d < smallest or (d - offset) % step:
        raise ValueError(f"{model} depth={d}: {rule} with n >= 1 ({examples})")
    return d


def conv3x3(features: int, stride: int = 1, *, keep_width: bool = False) -> Conv:
    """Bias-free 3x3 convolution padded 1 on each side."""
    return Conv(features, 3, stride, 1, use_bias=False, keep_width=keep_width)


def conv1x1(features: int, stride: int = 1) -> Conv:
    """Bias-free 1x1 convolution (a projection shortcut)."""
    return Conv(features, 1, stride, "VALID", use_bias=False)


# -- He et al. 2015, CIFAR ResNets ------------------------------------------------------------------------


def basic_block(in_ch: int, out: int, stride: int, shortcut: str) -> Layer:
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""
    body = Sequential({
        "conv1": conv3x3(out, stride), "bn1": BatchNorm(), "relu1": ReLU(),
        "conv2": conv3x3(out), "bn2": BatchNorm(),
    })
    short: Layer | None = None
    if stride != 1 or in_ch != out:
        if shortcut == "A":
            short = SubsamplePad(out, stride)
        else:
            short = Sequential({"conv": conv1x1(out, stride), "bn": BatchNorm()})
    return Sequential({"residual": Residual(body, short), "relu": ReLU()})


@register_model(input_shape=(32, 32, 3), num_classes=10)
def resnet_cifar(
    *,
    num_classes: int = 10,
    width: float = 1.0,
    depth: int = 20,
    shortcut: str = "A",
    widths: tuple[int, int, int] = (16, 32, 64),
) -> Layer:
    """CIFAR ResNet (He et al. 2015, sec. 4.2): depth 6n+2, widths 16/32/64, shortcut A (zero pad) or B.

    conv3x3 16 + BN-ReLU; stages of n post-activation basic blocks at ``widths`` on 32/16/8 maps (stride 2
    in the first block of stages 2 and 3); global average pool; dense. ``depth`` = 6n+2 (20, 32, 44, 56,
    110, 1202; anything else raises ``resnet_cifar depth=21: depth must be 6n+2``). ``shortcut="A"`` (the
    paper's CIFAR choice, the default): where the shape changes, subsample by 2 and zero-pad the channels
    (:class:`~jaxcnn.layers.SubsamplePad`, no parameters); ``"B"``: a 1x1 stride-2 conv + BN there.
    ``width`` multiplies every width by :func:`jaxcnn.transforms.scale_width` (``resnet_cifar/0.5`` is
    ``widths=(8, 16, 32)``); the classifier keeps ``num_classes``.

    Counts (10 classes): ResNet-20 A 269,722, B 272,474; ResNet-56 A 853,018, B 855,770; the paper's
    0.27M / 0.46M / 0.66M / 0.85M / 1.7M / 19.4M for 20/32/44/56/110/1202. CIFAR-10 error [paper,
    Table 6]: 8.75 / 7.51 / 7.17 / 6.97 / 6.43 / 7.93.

    Reference recipe [paper]: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at
    32k and 48k iterations, stop at 64k (about epochs 82/123/164 on 45k images), He init, 4-pixel pad +
    random crop + flip, 45k/5k train/val split: ``TrainConfig(optimizer="momentum", lr=0.1,
    weight_decay=1e-4, batch=128, schedule="multistep", milestones=(82, 123), epochs=164, crop_pad=4,
    flip=True)``. ResNet-110/1202 train at lr 0.01 for about 400 iterations (until the training error is
    below 80 %), then at 0.1 again; ``warmup_epochs=1`` (a linear ramp from 0) is the nearest jaxcnn has.
    """
    depth = check_depth("resnet_cifar", depth, 6, 2, 8, "20, 32, 44, 56, 110, 1202")
    if shortcut not in ("A", "B"):
        raise ValueError(f"resnet_cifar shortcut={shortcut!r}: shortcut must be 'A' (subsample + zero pad) or 'B' "
                         "(1x1 conv + BN)")
    if len(widths) != 3 or any(not isinstance(c, int) or c < 1 for c in widths):
        raise ValueError(f"resnet_cifar widths={widths!r}: widths must be three positive ints")
    n = (depth - 2) // 6
    layers: dict[str, Layer] = {"stem": Sequential({"conv": conv3x3(widths[0]), "bn": BatchNorm(), "relu": ReLU()})}
    in_ch = widths[0]
    for s, out in enumerate(widths):
        blocks = {}
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            blocks[f"block{b + 1}"] = basic_block(in_ch, out, stride, shortcut)
            in_ch = out
        layers[f"stage{s + 1}"] = Sequential(blocks)
    layers["pool"] = GlobalAvgPool()
    layers["fc"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width)


# -- pre-activation blocks (WRN, PreAct ResNet-18) ---------------------------------------------------------


def preact_block(out: int, stride: int, dropout: float = 0.0) -> Layer:
    """Pre-activation basic block: BN-ReLU-conv3x3(stride), BN-ReLU-[dropout]-conv3x3, plus the shortcut.

    Where the shape changes, the shortcut is a bias-free 1x1 projection of the *pre-activated* input (the
    first BN-ReLU is shared by both branches); otherwise it is the raw input (the identity). The
    :class:`~jaxcnn.layers.Projection` decides from the input shape, so ``scale_width`` keeps it right.
    """
    inner: dict[str, Layer] = {"conv1": conv3x3(out, stride), "bn2": BatchNorm(), "relu2": ReLU()}
    if dropout:
        inner["dropout"] = Dropout(dropout)
    inner["conv2"] = conv3x3(out)
    return PreActResidual(Sequential({"bn1": BatchNorm(), "relu1": ReLU()}), Sequential(inner),
                          Projection(out, stride))


@register_model(input_shape=(32, 32, 3), num_classes=10)
def wrn(*, num_classes: int = 10, width: float = 1.0, depth: int = 28, dropout: float = 0.0) -> Layer:
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): depth 6N+4, width = k, pre-activation blocks.

    ``wrn/10`` with ``depth=28`` is WRN-28-10.

    conv3x3 3->16 (not widened); three groups of N pre-activation basic blocks B(3,3) at 16k, 32k, 64k
    channels (``width`` is k, each rounded to the nearest integer), strides 1, 2, 2 (32/16/8 maps); BN,
    ReLU, global average pool, dense. No conv biases; ``dropout`` (0.3 in the paper's dropout runs) sits
    between the two convs, after the second BN-ReLU. The shortcut is a bias-free 1x1 conv only where
    the input and output widths differ (the first block of each group; for k = 1 group 1 has none), and
    then it takes the pre-activated input. ``depth`` = 6N+4 (10, 16, 22, 28, 40, ...; otherwise
    ``wrn depth=27: depth must be 6n+4``).

    Counts (10 classes): WRN-28-10 36,479,194; WRN-16-8 10,961,370; WRN-16-10 17,116,634. CIFAR-10 /
    CIFAR-100 error [paper]: WRN-28-10 4.00 / 19.25 (with dropout 3.89 / 18.85); WRN-16-8 4.27 / 20.43.
    The shortcuts are :class:`~jaxcnn.layers.Projection` layers (a 1x1 conv exactly where the shape
    changes), so ``scale_width(wrn(width=k), m)`` equals ``wrn(width=k*m)``, k = 1 included.

    Reference recipe (authors' scripts): SGD with Nesterov momentum 0.9, lr 0.1 times 0.2 at epochs 60, 120
    and 160 of 200, batch 128, weight decay 5e-4, 4-pixel reflection-pad random crop + flip:
    ``TrainConfig(optimizer="nesterov", lr=0.1, schedule="multistep", milestones=(60, 120, 160),
    milestone_factor=0.2, epochs=200, batch=128, weight_decay=5e-4, crop_pad=4, flip=True)`` (jaxcnn's crop
    pads with zeros, not by reflection).
    """
    depth = check_depth("wrn", depth, 6, 4, 10, "10, 16, 22, 28, 40")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"wrn dropout={dropout!r}: dropout is the drop probability and must be in [0, 1)")
    n = (depth - 4) // 6
    widths = [round_channels(c, width) for c in (16, 32, 64)]
    layers: dict[str, Layer] = {"stem": conv3x3(16, keep_width=True)}
    for g, out in enumerate(widths):
        blocks = {}
        for b in range(n):
            stride = 2 if (b == 0 and g > 0) else 1
            blocks[f"block{b + 1}"] = preact_block(out, stride, dropout)
        layers[f"group{g + 1}"] = Sequential(blocks)
    layers["bn"] = BatchNorm()
    layers["relu"] = ReLU()
    layers["pool"] = GlobalAvgPool()
    layers["fc"] = Dense(num_classes, keep_width=True)
    return Sequential(layers)


@register_model(input_shape=(32, 32, 3), num_classes=10)
def resnet18k(*, num_classes: int = 10, width: float = 1.0, k: int = 64, depth: int = 18) -> Layer:
    """PreAct ResNet-18 at widths k, 2k, 4k, 8k (Nakkiran et al. 2019, deep double descent).

    conv3x3 3->k (no BN-ReLU, no max-pool); four stages of pre-activation basic blocks at k, 2k, 4k, 8k,
    strides 1, 2, 2, 2; the shortcut is a bias-free 1x1 conv (no BN) of the pre-activated input where the
    stride or width changes; no final BN-ReLU; global average pool (the paper's 4x4 pool at 32x32); dense.
    The width is set by ``k`` (``--option k=12``; k = 64 is the standard PreAct ResNet-18, 11,171,146
    parameters at 10 classes); ``width`` multiplies the stage widths further by ``scale_width``'s rounding
    (``resnet18k/0.5`` is ``k=32``). ``depth`` = 8n+2 gives n blocks per stage (18: the paper's
    [2, 2, 2, 2]; otherwise ``resnet18k depth=20: depth must be 8n+2``).

    Reference recipe [paper]: k = 1 ... 64, Adam lr 1e-4 constant, 4,000 epochs, batch 128, no weight decay,
    random crop + flip; label noise: with probability p the label is replaced, once, by a uniformly random
    incorrect class: ``TrainConfig(optimizer="adam", lr=1e-4, schedule="constant", weight_decay=0.0,
    epochs=4000, batch=128, crop_pad=4, flip=True)`` (label noise is applied to the data, not by TrainConfig).
    """
    depth = check_depth("resnet18k", depth, 8, 2, 10, "10, 18, 26, 34")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"resnet18k k={k!r}: k must be a positive int")
    n = (depth - 2) // 8
    layers: dict[str, Layer] = {"stem": conv3x3(k)}
    for s in range(4):
        out = k * 2**s
        blocks = {}
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            blocks[f"block{b + 1}"] = preact_block(out, stride)
        layers[f"stage{s + 1}"] = Sequential(blocks)
    layers["pool"] = GlobalAvgPool()
    layers["fc"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width)
