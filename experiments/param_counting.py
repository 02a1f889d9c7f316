"""SPEC.md's worked examples A-G, each figure computed by jaxcnn beside the article's claim.

Command:  .venv/bin/python experiments/param_counting.py
Runtime:  about 10-20 s on a 2-core CPU (everything is array-free accounting except
          section F, which runs a narrow VGG-16-shaped network at 224x224 and 384x384).
Output:   one line per figure: what it is, the value jaxcnn computes, the article's
          claim (typed in from SPEC.md / features.md, labelled "article"), and a mark:
            ok        the computed figure equals the claim (to the claim's precision)
            erratum   the claim is a known misprint; the note says which figure is right
            caveat    true only approximately, for a reason the article leaves out
            MISMATCH  anything else (the script then exits with status 1)
          Expected: every line "ok" except the errata (cs231n's "24M" activations, the
          MobileNet paper's "1.19%") and the "caveat" on F's padded sliding-window line
          (the article states it without the padding caveat; the VALID line is exact).
No figure on the "jaxcnn" side is typed in: each comes from jaxcnn.summary or from
running the converted network.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import BatchNorm, Conv, Dense, Flatten, MaxPool, Parallel, ReLU, Sequential, models
from jaxcnn.models.resnet import bottleneck
from jaxcnn.summary import summary
from jaxcnn.transforms import fc_to_conv

MISMATCHES = []


def show(label, computed, claim, ok, note=""):
    """Print one comparison line; ``ok`` is True, False, "erratum" or "caveat"."""
    mark = ok if ok in ("erratum", "caveat") else ("ok" if ok else "MISMATCH")
    if mark == "MISMATCH":
        MISMATCHES.append(label)
    fmt = lambda v: f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
    extra = f"  ({note})" if note else ""
    print(f"  {label:52s} jaxcnn {fmt(computed):>22s}   article {fmt(claim):>22s}   {mark}{extra}")


def same(label, computed, claim, note=""):
    show(label, computed, claim, computed == claim, note)


def section(title):
    print(f"\n{title}")


def leaves(s):
    return [r for r in s.rows if r.is_leaf]


def row(s, name):
    return next(r for r in s.rows if r.name == name)


IN = (224, 224, 3)

# -- A ---------------------------------------------------------------------------------------
section("A. Fewer layers, more parameters (224x224x3, 3x3 SAME convs, 2x2 pools; seeds/000)")
s4 = summary(models.get("spec_a_4conv"), IN)
s3 = summary(models.get("spec_a_3conv"), IN)
same("model 1 per-layer params", ", ".join(f"{r.learnable_params:,}" for r in leaves(s4) if r.learnable_params),
     "864, 18,432, 73,728, 294,912, 6,422,528, 256")
same("model 1 total, no biases", s4.totals.learnable_params, 6_810_720)
same("model 2 first FC (28x28x128x128)", row(s3, "fc1").learnable_params, 12_845_056)
same("model 2 total, no biases", s3.totals.learnable_params, 12_938_336)
same("model 1 total, with biases",
     summary(models.get("spec_a_4conv", bias=True), IN).totals.learnable_params, 6_811_330)
same("model 2 total, with biases",
     summary(models.get("spec_a_3conv", bias=True), IN).totals.learnable_params, 12_938_690)
same("model 1 with GAP: first FC (256x128)",
     row(summary(models.get("spec_a_4conv", head="gap"), IN), "fc1").learnable_params, 32_768)

# -- B ---------------------------------------------------------------------------------------
section("B. MNIST net, VALID, with biases (seeds/003)")
sb = summary(models.get("mnist_net"), (28, 28, 1))
for name, shape, params in [("conv1", "24x24x32", 832), ("pool1", "12x12x32", 0), ("conv2", "10x10x32", 9_248),
                            ("pool2", "5x5x32", 0), ("fc1", "256", 205_056), ("fc2", "10", 2_570)]:
    r = row(sb, name)
    got = "x".join(map(str, r.out_shape))
    same(f"{name} output / params", f"{got} / {r.learnable_params:,}", f"{shape} / {params:,}")
same("total learnable", sb.totals.learnable_params, 217_706)
bn = summary(Sequential([Conv(32, 3, use_bias=False), BatchNorm()]), (8, 8, 3))
same("BatchNorm over 32 channels: learnable / state",
     f"{row(bn, '01_bn').learnable_params} / {row(bn, '01_bn').state_params}", "64 / 64", "2n and 2n")

# -- C ---------------------------------------------------------------------------------------
section("C. Small kernels, C = F = 256, 56x56 output, SAME, no bias (seeds/002, seeds/001)")
C, H = 256, 56
one5 = summary(Conv(C, 5, use_bias=False), (H, H, C)).totals
two3 = summary(Sequential([Conv(C, 3, use_bias=False)] * 2), (H, H, C)).totals
three3 = summary(Sequential([Conv(C, 3, use_bias=False)] * 3), (H, H, C)).totals
one7 = summary(Conv(C, 7, use_bias=False), (H, H, C)).totals
bott = summary(Sequential([Conv(C // 2, 1, use_bias=False), Conv(C // 2, 3, use_bias=False),
                           Conv(C, 1, use_bias=False)]), (H, H, C)).totals
plain = summary(Conv(C, 3, use_bias=False), (H, H, C)).totals
same("one 5x5: params (25CF)", one5.learnable_params, 25 * C * C)
same("one 5x5: MACs (25HWCF)", one5.macs, 25 * H * H * C * C)
same("two 3x3: params (18CF)", two3.learnable_params, 18 * C * C)
same("two 3x3: MACs (18HWCF)", two3.macs, 18 * H * H * C * C)
same("receptive field one 5x5 / two 3x3", f"{one5.receptive_field[0]} / {two3.receptive_field[0]}", "5 / 5")
same("three 3x3: params (27C^2)", three3.learnable_params, 27 * C * C)
same("one 7x7: params (49C^2)", one7.learnable_params, 49 * C * C)
same("receptive field three 3x3 / one 7x7",
     f"{three3.receptive_field[0]} / {one7.receptive_field[0]}", "7 / 7")
same("1x1 bottleneck C->C/2->C/2->C (3.25C^2)", bott.learnable_params, 13 * C * C // 4)
same("plain 3x3 C->C (9C^2)", plain.learnable_params, 9 * C * C)

# -- D ---------------------------------------------------------------------------------------
section("D. ResNet bottleneck vs ResNeXt block, conv weights only (BN excluded; seeds/004)")


def conv_weights(s):
    return sum(r.learnable_params for r in leaves(s) if r.kind == "conv")


res = summary(bottleneck(64, 256), (56, 56, 256))
same("ResNet 256->1x1,64->3x3,64->1x1,256", conv_weights(res), 69_632)
nxt = summary(bottleneck(128, 256, groups=32), (56, 56, 256))
same("ResNeXt grouped 3x3 (32 groups, 128 channels)", conv_weights(nxt), 70_144)
path = Sequential([Conv(4, 1, use_bias=False), Conv(4, 3, use_bias=False), Conv(256, 1, use_bias=False)])
paths = summary(Parallel([path] * 32), (56, 56, 256))
same("ResNeXt as 32 explicit paths (Parallel)", paths.totals.learnable_params, 70_144)

# -- E ---------------------------------------------------------------------------------------
section("E. Output size, dilation, receptive field (seeds/001)")
for w, f, p, st in [(224, 3, 1, 1), (227, 11, 0, 4), (224, 7, 3, 2)]:
    got = summary(Conv(1, f, st, p), (w, w, 1)).totals.output_shape[0]
    same(f"output size W={w} F={f} P={p} S={st}", got, (w - f + 2 * p) // st + 1, "floor((W-F+2P)/S)+1")
same("two 3x3 stride-1 convs", summary(Sequential([Conv(1, 3)] * 2), (32, 32, 1)).totals.receptive_field[0], 5)
same("three 3x3 stride-1 convs", summary(Sequential([Conv(1, 3)] * 3), (32, 32, 1)).totals.receptive_field[0], 7)
same("3x3 dilation 2 (effective kernel d(F-1)+1)",
     summary(Conv(1, 3, dilation=2), (32, 32, 1)).totals.receptive_field[0], 5)
same("3x3 convs with dilations 1, 2, 4",
     summary(Sequential([Conv(1, 3, dilation=d) for d in (1, 2, 4)]), (32, 32, 1)).totals.receptive_field[0], 15)
same("parallel 1x1 / 3x3 / 5x5 branches (largest)",
     summary(Parallel([Conv(1, 1), Conv(1, 3), Conv(1, 5)]), (32, 32, 1)).totals.receptive_field[0], 5)
same("VGG-16 at pool5 (google-research/receptive_field)",
     row(summary(models.get("vgg16"), IN), "pool5").rf[0], 212)
same("MobileNet v1 before the pool (receptive_field)",
     row(summary(models.get("mobilenet_v1"), IN), "block13/pw_relu").rf[0], 315)
ac = row(summary(models.get("allconv6"), IN), "relu5")
same("allconv6 before the pool: rf / jump", f"{ac.rf[0]} / {ac.jump[0]}", "63 / 32", "features.md 2.4")

# -- F ---------------------------------------------------------------------------------------
section("F. FC layers as convolutions (VGG-16 shape, narrow channels, 1000 classes; seeds/001)")
vgg = models.get("vgg16", channels=((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8)), hidden=16, dropout=0.0)
params, state = vgg.init(jax.random.key(0), IN)
cvgg, cparams = fc_to_conv(vgg, params, IN)
fwd = jax.jit(lambda p, s, x: vgg.apply(p, s, x)[0])
cfwd = jax.jit(lambda p, s, x: cvgg.apply(p, s, x)[0])
x = jax.random.normal(jax.random.key(1), (2, *IN))
y, yc = np.asarray(fwd(params, state, x)), np.asarray(cfwd(cparams, state, x)).reshape(2, -1)
rel = float(np.abs(y - yc).max() / np.abs(y).max())
show("logits at 224: max relative difference", f"{rel:.1e}", "identical", rel < 1e-5, "float32 summation order")
big = jax.random.normal(jax.random.key(2), (1, 384, 384, 3))
score = np.asarray(cfwd(cparams, state, big))
same("score map at 384x384", "x".join(map(str, score.shape[1:])), "6x6x1000")
crops = jnp.stack([big[0, 32 * i:32 * i + 224, 32 * j:32 * j + 224] for i in range(6) for j in range(6)])
windows = np.asarray(fwd(params, state, crops)).reshape(6, 6, -1)
dev = float(np.abs(score[0] - windows).max() / np.abs(windows).max())
show("padded VGG: map vs 224 windows at stride 32", f"max rel dev {dev:.1e}", "equal", dev < 1e-5 or "caveat",
     "padding: edge positions see real pixels, not zeros; see convert.py")
valid = Sequential([Conv(5, 3, 1, "VALID"), ReLU(), MaxPool(2), Conv(6, 3, 1, "VALID"), ReLU(), MaxPool(2),
                    Flatten(), Dense(12), ReLU(), Dense(3)])
vp, vs = valid.init(jax.random.key(3), (22, 22, 3))
cvalid, cvp = fc_to_conv(valid, vp, (22, 22, 3))
vbig = jax.random.normal(jax.random.key(4), (1, 30, 30, 3))
vmap_ = np.asarray(cvalid.apply(cvp, vs, vbig)[0])[0]
vcrops = jnp.stack([vbig[0, 4 * i:4 * i + 22, 4 * j:4 * j + 22] for i in range(3) for j in range(3)])
vwin = np.asarray(valid.apply(vp, vs, vcrops)[0]).reshape(3, 3, -1)
vdev = float(np.abs(vmap_ - vwin).max() / np.abs(vwin).max())
show("VALID net: map vs windows (stride 4)", f"max rel dev {vdev:.1e}", "equal", vdev < 1e-5)

# -- G ---------------------------------------------------------------------------------------
section("G. Memory, VGG-16 at 224 (seeds/001; cs231n 'VGGNet in detail')")
sg = summary(models.get("vgg16"), IN)
t = sg.totals
same("learnable parameters (with biases)", t.learnable_params, 138_357_544)
same("first FC 7*7*512*4096 + 4096", row(sg, "fc6").learnable_params, 102_764_544)
fc_share = row(sg, "fc6").learnable_params / t.learnable_params
show("first FC share of parameters", f"{100 * fc_share:.1f}%", "most (100M of 140M)", fc_share > 0.5)
early = sum(r.activations for r in leaves(sg) if r.name.startswith(("conv1_", "pool1", "conv2_", "pool2")))
early_share = early / t.activations
show("blocks 1-2 share of activations", f"{100 * early_share:.1f}%", "most", early_share > 0.5)
n_act = t.activations + t.input_elements
same("activations incl. input (cs231n per-layer sum)", n_act, 15_237_608, "features.md 2.3")
show("activations incl. input (cs231n printed total)", f"{n_act / 1e6:.1f}M", "24M", "erratum",
     "cs231n issue #88: its own rows sum to 15.2M")
for opt, slots, word in [("sgd", 0, "1+1"), ("momentum", 1, "1+1+1"), ("adam", 2, "1+1+2")]:
    m = summary(models.get("vgg16"), IN, batch=32, optimizer=opt).totals.train_memory_bytes
    claim = 138_357_544 * (2 + slots) * 4 + 32 * 15_237_608 * 4
    same(f"training memory, batch 32, {opt} (params x {word})", f"{m / 2**20:,.1f} MiB", f"{claim / 2**20:,.1f} MiB")

# -- MobileNet (the width study's second family) -------------------------------------------------
section("MobileNet v1, paper Tables 6-7 (224 unless named, 1000 classes)")
for alpha, (mm, mp) in {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}.items():
    tm = summary(models.get("mobilenet_v1", width=alpha), IN).totals
    show(f"alpha {alpha}: million mult-adds / params", f"{tm.macs / 1e6:.2f} / {tm.learnable_params / 1e6:.2f}",
         f"{mm} / {mp}", round(tm.macs / 1e6) == mm and round(tm.learnable_params / 1e6, 1) == mp)
for size, mm in {192: 418, 160: 290, 128: 186}.items():
    tm = summary(models.get("mobilenet_v1"), (size, size, 3)).totals
    show(f"resolution {size}: million mult-adds", f"{tm.macs / 1e6:.2f}", mm, mm in (round(tm.macs / 1e6),
         int(tm.macs / 1e6)), "the paper truncates some cells")
sm = summary(models.get("mobilenet_v1"), IN)
c3 = 100 * row(sm, "conv0").macs / sm.totals.macs
show("Table 2: share of mult-adds in the 3x3 conv", f"{c3:.2f}%", "1.19%", "erratum", "digit swap for 1.91%")

print(f"\n{len(MISMATCHES)} unexpected mismatch(es)" + (": " + ", ".join(MISMATCHES) if MISMATCHES else ""))
sys.exit(1 if MISMATCHES else 0)
