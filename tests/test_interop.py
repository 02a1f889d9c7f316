"""Issue 15: PyTorch weights in and out (jaxcnn.storage.interop); the safetensors format is in test_safetensors.py.

The reference is PyTorch itself: torchvision's own VGG-16 (BN), ResNet-50, ResNeXt-50 32x4d and
DenseNet-121 with random weights (no download), and hand-written ``nn.Sequential`` models. Install with
``pip install -e '.[torch]'`` (torch==2.13.0 CPU, torchvision==0.28.0).
"""

import pickle

import jax
import numpy as np
import pytest

import jaxcnn as jc
from jaxcnn.storage import interop

torch = pytest.importorskip("torch", reason="PyTorch is the reference here; pip install -e '.[torch]'")
nn = torch.nn


def _randomise_bn(module) -> None:
    """Non-trivial BatchNorm scale, offset and running statistics, so every array takes part."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


def _scale_tol(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _small_pair():
    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU()), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(16 * 4 * 4, 10),
    ).eval()
    _randomise_bn(ref)
    model = jc.Sequential([
        jc.Conv(8, 3, 1, 1), jc.BatchNorm(), jc.ReLU(),
        jc.Conv(16, 3, 2, 1, groups=4, use_bias=False), jc.BatchNorm(), jc.ReLU(),
        jc.Sequential([jc.DepthwiseConv(3, 1, 1, use_bias=True), jc.ReLU()]), jc.MaxPool(2), jc.Flatten(),
        jc.Dropout(0.5), jc.Dense(10),
    ])
    return ref, model


def test_sequential_state_dict_gives_torch_logits_and_round_trips(tmp_path):
    ref, model = _small_pair()
    sd = ref.state_dict()
    params, state = interop.from_torch(model, sd, (16, 16, 3))
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = model.apply(params, state, x.transpose(0, 2, 3, 1))[0]  # the Dense after Flatten has its rows reordered
    _scale_tol(np.asarray(got), want)
    back = interop.to_torch(model, params, state, (16, 16, 3))
    assert list(back) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})  # strict: every name and shape fits
    for suffix in (".safetensors", ".pth"):
        path = interop.save_state_dict(tmp_path / f"w{suffix}", back)
        p2, s2 = interop.from_torch(model, interop.read_state_dict(path), (16, 16, 3))
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, (p2, s2), (params, state)))


def test_mismatches_name_the_first_torch_key():
    ref, model = _small_pair()
    sd = ref.state_dict()
    wrong = dict(sd)
    wrong["3.weight"] = torch.zeros(16, 8, 3, 3)  # ungrouped where jaxcnn has groups=4
    with pytest.raises(interop.InteropError, match=r"torch key '3\.weight' has shape \(16, 8, 3, 3\).*\(16, 2, 3, 3\)"):
        interop.from_torch(model, wrong, (16, 16, 3))
    extra = {**sd, "11.weight": torch.zeros(10, 10), "11.bias": torch.zeros(10)}
    with pytest.raises(interop.InteropError, match="unexpected torch key '11.weight'"):
        interop.from_torch(model, extra, (16, 16, 3))
    short = {k: v for k, v in sd.items() if not k.startswith("10.")}
    with pytest.raises(interop.InteropError, match="no module for jaxcnn layer 10_dense"):
        interop.from_torch(model, short, (16, 16, 3))
    swapped = {k: v for k, v in sd.items() if not k.startswith("0.")}  # the first module is now the BatchNorm
    with pytest.raises(interop.InteropError, match="torch module '1' has .*running_mean.*00_conv"):
        interop.from_torch(model, swapped, (16, 16, 3))
    with pytest.raises(interop.InteropError, match="arch must be"):
        interop.to_torch(model, {}, {}, arch="alexnet")


class _Payload:
    """Pickles as a call to open(marker, "w"): creating the marker file would prove the code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pth_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(2), "evil": _Payload(marker)}, zipped)  # torch's zip format
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"0.weight": _Payload(marker)}, protocol=2))  # a bare pickle (legacy format)
    for path in (zipped, raw):
        with pytest.raises(interop.InteropError, match=str(path.name)):
            interop.read_state_dict(path)
        assert not marker.exists(), f"{path.name}: the payload ran"
    with pytest.raises(interop.InteropError, match="refused .*evil.pth"):
        interop.read_state_dict(zipped)
    with pytest.raises(interop.InteropError, match="does not exist"):
        interop.read_state_dict(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def torchvision():
    from torchvision_compat import import_torchvision

    try:
        return import_torchvision()
    except ImportError as e:
        pytest.skip(f"torchvision is the reference here; pip install -e '.[torch]' ({e})")


@pytest.mark.slow
@pytest.mark.parametrize("arch", interop.ARCHS)
def test_torchvision_models_give_the_same_logits_and_round_trip(arch, torchvision, tmp_path):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, arch)(weights=None).eval()
    _randomise_bn(ref)
    sd = ref.state_dict()
    if not arch.startswith("vgg"):  # through a file, read without torch (VGG's 0.5 GB would add 5 s for nothing new)
        sd = interop.read_state_dict(interop.save_state_dict(tmp_path / f"{arch}.safetensors", sd))
    model, params, state = interop.load_torchvision(arch, sd)
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = jax.jit(lambda p, s, x: model.apply(p, s, x)[0])(params, state, x.transpose(0, 2, 3, 1))
    _scale_tol(np.asarray(got), want)
    back = interop.to_torch(model, params, state, arch=arch)
    assert list(back) == list(sd)
    assert [k for k, v in sd.items() if not np.array_equal(back[k], np.asarray(v))] == []
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})  # strict
    p2, s2 = interop.from_torch(model, back)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, (p2, s2), (params, state)))
