"""The scaling families against PyTorch: re-implementations of the CIFAR families (counts, forward) and torchvision.

Small PyTorch versions of He et al.'s CIFAR ResNet (akamaster/pytorch_resnet_cifar10's option A,
imgclsmob's option B), szagoruyko's WRN and kuangliu/Nakkiran's PreAct ResNet-18 (written from the
papers, independent of jaxcnn's builders): their parameter counts over several depths and widths, and
one forward pass each with the weights copied over. torchvision's EfficientNet B0-B7 are built on the
meta device (no memory, no init) for their counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models, walk
from jaxcnn.models.cifar_resnets import resnet18k, resnet_cifar, wrn
from jaxcnn.models.efficientnet import VARIANTS
from jaxcnn.summary import summary

torch = pytest.importorskip("torch")
nn = torch.nn
CIFAR = (32, 32, 3)


def params_of(model, shape=CIFAR):
    return summary(model, shape).totals.learnable_params


class TorchCifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet as in akamaster/pytorch_resnet_cifar10 (A) and imgclsmob (B)."""

    class Block(nn.Module):
        def __init__(self, cin, out, stride, option):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out)
            self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)
            self.option, self.pad = option, (out - cin) // 2
            self.short = None
            if (stride != 1 or cin != out) and option == "B":
                self.short = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            self.changes = stride != 1 or cin != out

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            if not self.changes:
                s = x
            elif self.option == "A":
                s = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
            else:
                s = self.short(x)
            return torch.relu(y + s)

    def __init__(self, depth, option="A", widths=(16, 32, 64), classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for s, w in enumerate(widths):
            for b in range(n):
                blocks.append(self.Block(cin, w, 2 if b == 0 and s else 1, option))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


class TorchPreActBlock(nn.Module):
    """szagoruyko's WRN block and kuangliu's PreActBlock: the projection takes relu(bn1(x))."""

    def __init__(self, cin, out, stride, dropout=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.short = nn.Conv2d(cin, out, 1, stride, bias=False) if (stride != 1 or cin != out) else None

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        y = self.conv2(self.drop(torch.relu(self.bn2(self.conv1(o)))))
        return y + (x if self.short is None else self.short(o))


class TorchWRN(nn.Module):
    def __init__(self, depth, k, classes=10):
        super().__init__()
        n = (depth - 4) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for g, w in enumerate((round(16 * k), round(32 * k), round(64 * k))):
            for b in range(n):
                blocks.append(TorchPreActBlock(cin, w, 2 if b == 0 and g else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(x.mean((2, 3)))


class TorchResNet18k(nn.Module):
    def __init__(self, k, n=2, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 3, 1, 1, bias=False)
        blocks, cin = [], k
        for s in range(4):
            for b in range(n):
                blocks.append(TorchPreActBlock(cin, k * 2**s, 2 if b == 0 and s else 1))
                cin = k * 2**s
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.conv(x)).mean((2, 3)))


def _torch_count(module):
    return sum(p.numel() for p in module.parameters())


def test_cifar_family_counts_equal_pytorch_reimplementations():
    with torch.device("meta"):
        for depth in (8, 20, 32, 44, 56, 110):
            for option in ("A", "B"):
                ours = params_of(resnet_cifar(depth=depth, shortcut=option))
                assert ours == _torch_count(TorchCifarResNet(depth, option)), (depth, option)
        assert params_of(resnet_cifar(depth=20, widths=(8, 16, 32))) == _torch_count(
            TorchCifarResNet(20, widths=(8, 16, 32)))
        for depth, k in ((10, 1), (16, 4), (22, 2), (40, 1), (40, 4), (28, 10)):
            assert params_of(wrn(depth=depth, width=k)) == _torch_count(TorchWRN(depth, k)), (depth, k)
        for k in (1, 4, 12, 64):
            assert params_of(resnet18k(k=k)) == _torch_count(TorchResNet18k(k)), k
        assert params_of(resnet18k(k=8, depth=26)) == _torch_count(TorchResNet18k(8, n=3))


def test_efficientnet_counts_equal_torchvision():
    from torchvision_compat import import_torchvision

    tv = import_torchvision()
    with torch.device("meta"):
        for v in VARIANTS:
            ref = _torch_count(getattr(tv.models, f"efficientnet_{v}")())
            e = models.entry(f"efficientnet_{v}")
            assert params_of(models.get(f"efficientnet_{v}"), e.input_shape) == ref, v


def _copy_weights(model, in_shape, params, state, torch_model):
    """Our params/state in execution order, from the torch modules in registration order (same layout)."""
    convs = [m for m in torch_model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]

    def owns(n):  # a Projection owns a kernel only where it projects
        return n.layer.kind in ("conv", "bn", "dense") or (
            n.layer.kind == "projection" and n.layer.projects(n.in_shape))

    leaves = [n for n in walk(model, in_shape, leaves_only=True) if owns(n)]
    assert len(convs) == len(leaves)

    def put(tree, keys, name, value):
        for k in keys:
            tree = tree[k]
        assert tree[name].shape == value.shape, (keys, name)
        tree[name] = jnp.asarray(value)

    for n, m in zip(leaves, convs, strict=True):
        if n.layer.kind in ("conv", "projection"):
            put(params, n.key_path, "w", m.weight.detach().numpy().transpose(2, 3, 1, 0))
        elif n.layer.kind == "dense":
            put(params, n.key_path, "w", m.weight.detach().numpy().T)
            put(params, n.key_path, "b", m.bias.detach().numpy())
        else:
            put(params, n.key_path, "scale", m.weight.detach().numpy())
            put(params, n.key_path, "offset", m.bias.detach().numpy())
            put(state, n.key_path, "mean", m.running_mean.numpy())
            put(state, n.key_path, "var", m.running_var.numpy())


@pytest.mark.parametrize("which", ["resnet_cifar_A", "resnet_cifar_B", "wrn", "resnet18k"])
def test_forward_equals_pytorch_with_copied_weights(which):
    torch.manual_seed(0)
    if which.startswith("resnet_cifar"):
        option = which[-1]
        ours, ref = resnet_cifar(depth=8, shortcut=option, widths=(4, 8, 16)), TorchCifarResNet(8, option, (4, 8, 16))
    elif which == "wrn":
        ours, ref = wrn(depth=10, width=0.5), TorchWRN(10, 0.5)  # widths 8, 16, 32 from a 16-channel stem
    else:
        ours, ref = resnet18k(k=2, depth=10), TorchResNet18k(2, n=1)
    ref.eval()
    for m in ref.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    shape = (16, 16, 3)
    params, state = jax.tree.map(np.asarray, ours.init(jax.random.key(0), shape))
    params, state = jax.tree.map(lambda a: a.copy(), (params, state))
    _copy_weights(ours, shape, params, state, ref)
    x = np.random.default_rng(0).standard_normal((2, 3, *shape[:2])).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got, _ = ours.apply(params, state, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
