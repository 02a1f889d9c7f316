"""Numerical cross-check of whole models against an independent implementation: PyTorch (CPU).

The torch modules below are written by hand from the architectures' definitions (NCHW,
``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear``), not generated from the jaxcnn model, so a
wrong layer order, padding, stride, group layout or channel count in jaxcnn shows up as a
mismatch. Both sides get the same weights: jaxcnn's init for the kernels, copied into torch
(HWIO -> OIHW, depthwise (kh, kw, 1, C) -> (C, 1, kh, kw), dense (D, F) -> (F, D)), with the
biases, BatchNorm scale/offset and running statistics replaced by random non-trivial values
so that every array takes part. Checked, in float32:

* logits of allconv6, allconv6_bn, MobileNet v1 (alpha 0.25, torch-style padding 1) at
  32x32 and of ResNeXt bottleneck blocks (groups=32, projection and identity shortcuts),
  in eval mode and with train-mode BatchNorm (outputs and the updated running mean/var),
  with the default convolution lowerings and with the other ones (xla depthwise for MobileNet,
  shift and im2col grouped convolutions for ResNeXt);
* the gradients of a mean softmax cross-entropy with respect to every weight and bias of
  allconv6 (and of allconv6_bn in train mode, including BatchNorm scale and offset).

Install the reference with ``pip install -e '.[torch]'`` (torch==2.13.0, a CPU build).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models, with_conv_impl
from jaxcnn.models.resnet import bottleneck

torch = pytest.importorskip(
    "torch",
    reason="PyTorch is the independent reference of this cross-check; install it with "
    "pip install -e '.[torch]' (torch==2.13.0, CPU build)",
)
nn = torch.nn

torch.set_num_threads(2)

RTOL = 1e-4  # relative tolerance of every comparison
ATOL = 1e-5  # absolute tolerance, as a fraction of the largest magnitude in the reference
# Train-mode BatchNorm divides by the standard deviation of as few as 4 values (batch 4 on a 1x1
# map), which amplifies float32 rounding; through MobileNet's 27 such layers the logits differ by
# up to ~5e-5 of their scale. In float64 both sides agree to ~1e-14, so this is rounding, not a
# different function. Only train-mode outputs and gradients get this looser bound; the updated
# running statistics keep ATOL (a biased running variance fails there).
TRAIN_ATOL = 2e-4
BATCH = 4
NUM_CLASSES = 10


# -- helpers ------------------------------------------------------------------------------


def assert_close(what: str, got, want, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    """assert_allclose with ``atol`` scaled by the reference's largest magnitude; prints the error.

    The printed relative difference divides by max(|ref|, 1e-3 * max |ref|) so near-zero entries
    do not dominate it.
    """
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-12)
    err = np.abs(got - want)
    rel = float((err / np.maximum(np.abs(want), scale * 1e-3)).max())
    print(f"{what}: max |ref| {scale:.3g}, max abs diff {err.max():.3g}, max rel diff {rel:.3g}")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def t(a) -> torch.Tensor:
    """A float32 torch tensor holding a copy of ``a``."""
    return torch.from_numpy(np.array(a, np.float32))


def to_nchw(x) -> torch.Tensor:
    """NHWC (jaxcnn) -> NCHW (torch)."""
    return t(np.transpose(np.asarray(x), (0, 3, 1, 2)))


def from_nchw(y: torch.Tensor) -> np.ndarray:
    """Torch output -> jaxcnn layout (NCHW -> NHWC; flat outputs unchanged)."""
    y = y.detach().numpy()
    return np.transpose(y, (0, 2, 3, 1)) if y.ndim == 4 else y


def get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def torch_layout(mod: nn.Module, name: str, a) -> torch.Tensor:
    """A jaxcnn array in the layout of ``mod``'s parameter ``name``."""
    a = np.asarray(a)
    if isinstance(mod, nn.Conv2d) and name == "w":
        a = np.transpose(a, (3, 2, 0, 1))  # HWIO / (kh, kw, 1, C) -> OIHW / (C, 1, kh, kw)
    elif isinstance(mod, nn.Linear) and name == "w":
        a = a.T  # (D, F) -> (F, D)
    return t(a)


def jax_layout(mod: nn.Module, name: str, a: torch.Tensor) -> np.ndarray:
    """A torch parameter (or its gradient) back in jaxcnn's layout."""
    a = a.detach().numpy()
    if isinstance(mod, nn.Conv2d) and name == "w":
        return np.transpose(a, (2, 3, 1, 0))
    if isinstance(mod, nn.Linear) and name == "w":
        return a.T
    return a


# jaxcnn array name -> torch attribute, per module type
PARAM_NAMES = {nn.Conv2d: {"w": "weight", "b": "bias"}, nn.Linear: {"w": "weight", "b": "bias"},
               nn.BatchNorm2d: {"scale": "weight", "offset": "bias"}}
STATE_NAMES = {"mean": "running_mean", "var": "running_var"}


def pairs(mapping, params):
    """(jaxcnn key path, torch module, jaxcnn name, torch attribute) for every learnable array."""
    for path, mod in mapping:
        names = PARAM_NAMES[type(mod)]
        jax_names = set(get(params, path))
        torch_names = {n for n, v in names.items() if getattr(mod, v) is not None}
        assert jax_names == torch_names, f"{'/'.join(path)}: jaxcnn has {jax_names}, torch {torch_names}"
        for name in sorted(jax_names):
            yield path, mod, name, names[name]


def load(mapping, params, state) -> None:
    """Copy jaxcnn params/state into the torch modules (shapes must agree exactly)."""
    n_arrays = sum(len(jax.tree_util.tree_leaves(get(params, path))) for path, _ in mapping)
    assert n_arrays == len(jax.tree_util.tree_leaves(params)), "the torch model does not cover every param"
    with torch.no_grad():
        for path, mod, name, attr in pairs(mapping, params):
            value = torch_layout(mod, name, get(params, path)[name])
            target = getattr(mod, attr)
            where = f"{'/'.join(path)}/{name}"
            assert tuple(target.shape) == tuple(value.shape), f"{where}: {target.shape} vs {value.shape}"
            target.copy_(value)
        for path, mod in mapping:
            if isinstance(mod, nn.BatchNorm2d):
                for name, attr in STATE_NAMES.items():
                    getattr(mod, attr).copy_(t(get(state, path)[name]))


def randomize(tree, rng: np.random.Generator, state: bool = False):
    """Random non-trivial biases, BN scale/offset (params) or running mean/var (state); kernels kept."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = randomize(value, rng, state)
        elif key in ("b", "offset", "mean"):
            out[key] = jnp.asarray(rng.normal(0.0, 0.2, value.shape), jnp.float32)
        elif key in ("scale", "var"):
            lo, hi = (0.5, 2.0) if state else (0.8, 1.25)
            out[key] = jnp.asarray(rng.uniform(lo, hi, value.shape), jnp.float32)
        else:
            out[key] = value
    return out


# -- the torch references, written from the architectures --------------------------------


def torch_allconv6(channels, bn: bool):
    """3x3 stride-2 pad-1 conv (+BN) + ReLU per entry of ``channels``, global average pool, FC."""
    layers, mapping, cin = OrderedDict(), [], 3
    for i, c in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=not bn)
        mapping.append(((f"conv{i}",), layers[f"conv{i}"]))
        if bn:
            layers[f"bn{i}"] = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
            mapping.append(((f"bn{i}",), layers[f"bn{i}"]))
        layers[f"relu{i}"] = nn.ReLU()
        cin = c
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(cin, NUM_CLASSES)
    mapping.append((("fc",), layers["fc"]))
    return nn.Sequential(layers), mapping


# MobileNet v1 at alpha = 0.25: round(0.25 * c) of the paper's Table 1 (stem 32, then the 13 blocks)
MOBILENET_STEM = 8
MOBILENET_BLOCKS = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2),
                    (128, 1), (128, 1), (128, 1), (128, 1), (128, 1), (256, 2), (256, 1))


def torch_mobilenet_v1_025(act=None):
    """Stem conv 3x3/1 + BN + ReLU; depthwise 3x3 + BN + ReLU + pointwise 1x1 + BN + ReLU blocks; GAP; FC.

    ``act``: the activation module's class in place of ``nn.ReLU`` (test_numerics uses ``nn.Tanh``).
    """
    act = nn.ReLU if act is None else act
    mapping = []

    def add(path, mod):
        mapping.append((path, mod))
        return mod

    cin = MOBILENET_STEM
    layers = OrderedDict(
        conv0=add(("conv0",), nn.Conv2d(3, cin, 3, stride=1, padding=1, bias=False)),
        bn0=add(("bn0",), nn.BatchNorm2d(cin)),
        relu0=act(),
    )
    for i, (c, s) in enumerate(MOBILENET_BLOCKS, start=1):
        b = f"block{i}"
        layers[b] = nn.Sequential(
            add((b, "dw"), nn.Conv2d(cin, cin, 3, stride=s, padding=1, groups=cin, bias=False)),
            add((b, "dw_bn"), nn.BatchNorm2d(cin)),
            act(),
            add((b, "pw"), nn.Conv2d(cin, c, 1, bias=False)),
            add((b, "pw_bn"), nn.BatchNorm2d(c)),
            act(),
        )
        cin = c
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = add(("fc",), nn.Linear(cin, NUM_CLASSES))
    return nn.Sequential(layers), mapping


class TorchBottleneck(nn.Module):
    """ResNeXt bottleneck (torchvision v1.5): 1x1 -> grouped 3x3 (stride) -> 1x1, + shortcut, ReLU."""

    def __init__(self, cin: int, width: int, out: int, stride: int, groups: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.project = project
        if project:
            self.short_conv = nn.Conv2d(cin, out, 1, stride=stride, bias=False)
            self.short_bn = nn.BatchNorm2d(out)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        s = self.short_bn(self.short_conv(x)) if self.project else x
        return torch.relu(y + s)

    def mapping(self):
        """(jaxcnn key path, torch module) of every module owning arrays."""
        body = [(("residual", "body", n), getattr(self, n)) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
        if self.project:
            body.append((("residual", "shortcut", "conv"), self.short_conv))
            body.append((("residual", "shortcut", "bn"), self.short_bn))
        return body


# -- cases --------------------------------------------------------------------------------

# name -> (jaxcnn model, per-example input shape, torch reference builder -> (module, mapping))
BASES = {
    "allconv6": lambda: (
        models.get("allconv6", num_classes=NUM_CLASSES), (32, 32, 3),
        functools.partial(torch_allconv6, (64, 64, 128, 128, 256), False),
    ),
    "allconv6_bn": lambda: (
        models.get("allconv6_bn", num_classes=NUM_CLASSES), (32, 32, 3),
        functools.partial(torch_allconv6, (64, 64, 128, 128, 256), True),
    ),
    "mobilenet_v1_0.25": lambda: (
        models.get("mobilenet_v1/0.25", num_classes=NUM_CLASSES, padding=1, stem_stride=1), (32, 32, 3),
        torch_mobilenet_v1_025,
    ),
    # 64 -> 256 channels, stride 2: projection shortcut (1x1/2 conv + BN)
    "resnext_block_s2_project": lambda: (
        bottleneck(128, 256, stride=2, groups=32, project=True), (16, 16, 64),
        lambda: resnext_ref(64, 2, True),
    ),
    # 256 -> 256 channels, stride 1: identity shortcut
    "resnext_block_s1_identity": lambda: (
        bottleneck(128, 256, stride=1, groups=32, project=False), (8, 8, 256),
        lambda: resnext_ref(256, 1, False),
    ),
}


def resnext_ref(cin: int, stride: int, project: bool):
    ref = TorchBottleneck(cin, 128, 256, stride, 32, project)
    return ref, ref.mapping()


@functools.cache
def prepared(base: str):
    """(model, params, state, x, torch builder) of a base case: jaxcnn init once, randomised, shared."""
    model, in_shape, build = BASES[base]()
    params, state = model.init(jax.random.key(len(base)), in_shape)
    rng = np.random.default_rng(sum(map(ord, base)))
    params = randomize(params, rng)
    state = randomize(state, rng, state=True)
    x = jnp.asarray(rng.normal(size=(BATCH, *in_shape)), jnp.float32)
    return model, params, state, x, build


def reference(base: str):
    """A fresh torch reference of ``base`` holding the case's weights and running statistics."""
    _, params, state, _, build = prepared(base)
    ref, mapping = build()
    load(mapping, params, state)
    return ref, mapping


# case id -> (base, convolution lowering or None for the model's own choice)
CASES = {
    "allconv6": ("allconv6", None),
    "allconv6_bn": ("allconv6_bn", None),
    "mobilenet_v1_0.25": ("mobilenet_v1_0.25", None),  # dw_impl="auto": the "shift" lowering on CPU
    "mobilenet_v1_0.25-xla": ("mobilenet_v1_0.25", "xla"),
    "resnext_block_s2_project": ("resnext_block_s2_project", None),  # "xla" grouped conv
    "resnext_block_s1_identity": ("resnext_block_s1_identity", None),
    "resnext_block_s2_project-shift": ("resnext_block_s2_project", "shift"),
    "resnext_block_s1_identity-im2col": ("resnext_block_s1_identity", "im2col"),
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_torch(case, train):
    base, impl = CASES[case]
    model, params, state, x, _ = prepared(base)
    if impl is not None:
        model = with_conv_impl(model, impl)
    ref, mapping = reference(base)
    bns = [(path, mod) for path, mod in mapping if isinstance(mod, nn.BatchNorm2d)]
    if train and not bns:
        pytest.skip("no BatchNorm: train mode is the same function as eval mode")

    y, new_state = jax.jit(functools.partial(model.apply, train=train))(params, state, x)
    ref.train(train)
    with torch.no_grad():
        want = from_nchw(ref(to_nchw(x)))
    mode = "train" if train else "eval"
    assert_close(f"{case} {mode} output", y, want, atol=TRAIN_ATOL if train else ATOL)

    for path, mod in bns:
        for key, attr in STATE_NAMES.items():
            got = get(new_state, path)[key]
            if not train:  # eval mode leaves the statistics alone, on both sides
                np.testing.assert_array_equal(np.asarray(got), np.asarray(get(state, path)[key]))
            assert_close(f"{case} {mode} {'/'.join(path)} running {key}", got, getattr(mod, attr).numpy())


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


@pytest.mark.parametrize("base", ["allconv6", "allconv6_bn"], ids=["allconv6", "allconv6_bn-train"])
def test_gradients_match_torch(base):
    model, params, state, x, _ = prepared(base)
    ref, mapping = reference(base)
    train = base.endswith("_bn")  # batch statistics, so BN's backward through mean and variance is checked
    labels = np.array([3, 0, 9, 5, 1, 7, 2, 8])[:BATCH]

    def loss_fn(p):
        logits, _ = model.apply(p, state, x, train=train)
        return cross_entropy(logits, jnp.asarray(labels))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)

    ref.train(train)
    ref.zero_grad()
    want_loss = nn.functional.cross_entropy(ref(to_nchw(x)), torch.from_numpy(labels))
    want_loss.backward()
    assert_close(f"{base} loss", loss, want_loss.detach().numpy())

    checked = 0
    for path, mod, name, attr in pairs(mapping, params):
        want = jax_layout(mod, name, getattr(mod, attr).grad)
        assert_close(f"{base} grad {'/'.join(path)}/{name}", get(grads, path)[name], want,
                     atol=TRAIN_ATOL if train else ATOL)
        checked += 1
    assert checked == len(jax.tree_util.tree_leaves(grads)) == len(list(ref.parameters()))
