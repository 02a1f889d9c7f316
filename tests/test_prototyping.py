"""Issue 15 (research prototyping): custom optimizer, loss and metrics in fit; the public step; safetensors checkpoints.

The references are written by hand here: the raw-JAX training step (value_and_grad of the loss through
``model.apply``, then the optax update) and the weight-decay mask spelled out per layer.
"""

import json
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import tiny_data

import jaxcnn as jc
from jaxcnn import models
from jaxcnn.storage import checkpoint, safetensors
from jaxcnn.train import TrainConfig, Trainer, fit, make_optimizer, step


def small_model() -> jc.Layer:
    # no conv bias: before BatchNorm its gradient is zero but for rounding, which LAMB would scale up
    return jc.Sequential([jc.Conv(8, 3, 2, 1, use_bias=False), jc.BatchNorm(), jc.ReLU(), jc.GlobalAvgPool(),
                          jc.Dense(4, keep_width=True)])


# the mask written out by hand: kernels decay, BatchNorm and biases do not
HAND_MASK = {"00_conv": {"w": True}, "01_bn": {"scale": False, "offset": False},
             "04_dense": {"w": True, "b": False}}


def custom_loss(logits, labels, batch):
    """Cross-entropy + an L2 penalty on every param (through batch["params"]) + a logit penalty."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    l2 = sum(jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(batch["params"]))
    return ce + 1e-3 * l2 + 1e-2 * jnp.mean(jnp.square(logits))


def logit_sq(logits, labels, batch):
    return jnp.mean(jnp.square(logits))


def test_fit_with_custom_optimizer_and_loss_equals_raw_jax_steps():
    model, data = small_model(), tiny_data(n=128)  # 96 training images: one batch of all of them per epoch
    n, epochs = len(data.y_train), 3
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.lamb(1e-2, weight_decay=1e-2, mask=step.decay_mask(model)))
    cfg = TrainConfig(epochs=epochs, batch=n, seed=0, eval_batch=32)
    res = fit(model, data, cfg, optimizer=tx, loss=custom_loss, metrics={"logit_sq": logit_sq}, quiet=True)

    # raw JAX: fit's init key for seed 0 is fold_in(key(0), 0); the whole set is one batch, so fit's shuffle
    # only reorders sums (hence a float tolerance, not bit equality)
    ref_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.lamb(1e-2, weight_decay=1e-2, mask=HAND_MASK))
    params, state = model.init(jax.random.fold_in(jax.random.key(0), 0), data.x_train.shape[1:])
    opt = ref_tx.init(params)
    x = (data.x_train.astype(np.float32) - 255 * data.mean) / (255 * data.std)
    y = jnp.asarray(data.y_train)

    @jax.jit
    def raw_step(params, state, opt):
        def objective(p):
            logits, new_state = model.apply(p, state, x, train=True)
            return custom_loss(logits, y, {"params": p}), (new_state, logits)

        (loss, (state, logits)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt = ref_tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), state, opt, loss, jnp.mean(jnp.square(logits))

    for e in range(epochs):
        params, state, opt, loss, sq = raw_step(params, state, opt)
        np.testing.assert_allclose(res.history[e].train_loss[0], loss, rtol=1e-5)
        np.testing.assert_allclose(res.history[e].metrics["logit_sq"][0], sq, rtol=1e-4)
    got = jax.tree_util.tree_map(lambda a: a[0], (res.params, res.state))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), got, (params, state))
    assert res.identity["custom.loss"].endswith("custom_loss")
    assert res.identity["custom.metrics"] == ["logit_sq"]


def test_named_optimizers_are_factories_of_the_same_path():
    model, data = small_model(), tiny_data(n=128)
    cfg = TrainConfig(epochs=3, batch=32, optimizer="adamw", weight_decay=0.1, warmup_epochs=1)
    seen = []

    def factory(steps):
        seen.append(steps)
        return make_optimizer(cfg, steps, model)

    named, custom = Trainer(model, cfg, data), Trainer(model, cfg, data, optimizer=factory)
    assert seen == [len(data.y_train) // 32]
    params, _ = model.init(jax.random.key(1), data.x_train.shape[1:])
    grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) * 0.3, params)
    sa, sb = named.tx.init(params), custom.tx.init(params)
    for _ in range(4):  # through the warm-up into the cosine schedule
        ua, sa = named.tx.update(grads, sa, params)
        ub, sb = custom.tx.update(grads, sb, params)
        jax.tree_util.tree_map(np.testing.assert_array_equal, ua, ub)
    # adamw's decay reaches the kernels only: elsewhere its updates are adam's, bit for bit
    flat = TrainConfig(optimizer="adamw", weight_decay=0.1, schedule="constant", lr=0.05)
    tx, bare = make_optimizer(flat, 3, model), optax.adam(0.05)
    ua, _ = tx.update(grads, tx.init(params), params)
    ub, _ = bare.update(grads, bare.init(params), params)
    for layer, name, same in (("01_bn", "scale", True), ("04_dense", "b", True), ("00_conv", "w", False)):
        assert np.array_equal(ua[layer][name], ub[layer][name]) == same, (layer, name)
    with pytest.raises(TypeError, match="returned dict"):
        Trainer(model, cfg, data, optimizer=lambda steps: {})


def test_decay_mask_comes_from_layer_traits():
    model = small_model()
    params, _ = model.init(jax.random.key(0), (8, 8, 1))
    assert step.decay_mask(model)(params) == HAND_MASK

    class Scaled(jc.Layer):  # a custom layer declaring its own decayed array
        decayed = ("gain",)

        def spec(self, in_shape):
            return jc.Spec(in_shape)

        def param_shapes(self, in_shape):
            return {"gain": (in_shape[-1],), "shift": (in_shape[-1],)}

        def init_param(self, name, key, shape, in_shape):
            return jnp.ones(shape)

        def forward(self, params, state, x, *, train, key):
            return x * params["gain"] + params["shift"], state

    custom = jc.Sequential({"conv": jc.Conv(4, 3), "scaled": Scaled(), "bn": jc.BatchNorm()})
    p, _ = custom.init(jax.random.key(0), (8, 8, 3))
    assert step.decay_mask(custom)(p) == {"conv": {"w": True, "b": False}, "scaled": {"gain": True, "shift": False},
                                          "bn": {"scale": False, "offset": False}}
    with pytest.raises(ValueError, match="'extra'"):
        step.decay_mask(custom)({**p, "extra": {}})
    # on the zoo the traits give what the old leaf-name rule ("w") gave
    for name, kw in (("resnext50_32x4d", {"small_input": True}), ("densenet121", {"small_input": True}),
                     ("mobilenet_v1", {})):
        m = models.get(name, num_classes=10, **kw)
        shapes = jax.eval_shape(lambda m=m: m.init(jax.random.key(0), (32, 32, 3)))[0]
        by_name = jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "w", shapes)
        assert step.decay_mask(m)(shapes) == by_name, name


def test_public_step_and_evaluate():
    model, data = small_model(), tiny_data(n=64)
    tx = optax.sgd(0.1)
    carry = step.init(model, jax.random.key(0), (8, 8, 1), tx)
    x = data.x_train.astype(np.float32) / 255
    carry, out = jax.jit(lambda c, x, y, k: step.train_step(model, tx, c, x, y, k))(carry, x, data.y_train,
                                                                                   jax.random.key(1))
    assert set(out) == {"loss", "correct"} and np.isfinite(out["loss"])
    scores = step.evaluate(model, carry[0], carry[1], x, data.y_train, batch_size=20)  # 48 = 2 x 20 + 8 padded
    logits = model.apply(carry[0], carry[1], x)[0]
    np.testing.assert_allclose(scores["accuracy"], np.mean(np.argmax(logits, -1) == data.y_train), atol=1e-6)
    want = optax.softmax_cross_entropy_with_integer_labels(logits, data.y_train).mean()
    np.testing.assert_allclose(scores["loss"], want, rtol=1e-5)
    with pytest.raises(TypeError, match="scalar"):
        step.train_step(model, tx, carry, x, data.y_train, jax.random.key(1),
                        loss=lambda logits, labels, batch: jnp.square(logits))


def test_safetensors_checkpoint_round_trip_names_and_integrity(tmp_path):
    params, state = small_model().init(jax.random.key(0), (8, 8, 1))
    tx = optax.adam(1e-3)
    tree = {"params": params, "state": state, "opt_state": tx.init(params), "key": jax.random.key(3)}
    ck = checkpoint.save(tmp_path, "ckpt-000001", tree, {"epoch": 0}, format="safetensors")
    meta = json.loads(ck.read_text())
    assert meta["array_file"] == "ckpt-000001.safetensors"
    # other tools see the params-tree paths as tensor names (parsed by hand: length, JSON header)
    raw = (tmp_path / "ckpt-000001.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["params/00_conv/w"]["dtype"] == "F32" and header["params/00_conv/w"]["shape"] == [3, 3, 1, 8]
    assert "opt_state/0/mu/04_dense/b" in header and header["key"]["dtype"] == "U32"
    loaded, _ = checkpoint.load(ck, tree)
    leaves = zip(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, loaded["params"])),
                 jax.tree_util.tree_leaves(params), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)
    assert jax.random.key_data(loaded["key"]).tolist() == jax.random.key_data(tree["key"]).tolist()
    # integrity: a flipped byte is caught by the sha256 in the JSON, before the arrays are parsed
    bad = bytearray(raw)
    bad[-1] ^= 1
    (tmp_path / "ckpt-000001.safetensors").write_bytes(bytes(bad))
    with pytest.raises(checkpoint.CheckpointError, match="sha256"):
        checkpoint.load(ck, tree)
    assert checkpoint.find_latest(tmp_path)[0] is None
    with pytest.raises(checkpoint.CheckpointError, match="format"):
        checkpoint.save(tmp_path, "x", tree, {}, format="pickle")


@pytest.mark.slow
def test_fit_writes_safetensors_checkpoints_and_resumes_from_them(tmp_path):
    model, data = small_model(), tiny_data(n=128)
    recipe = TrainConfig(epochs=1, batch=32, eval_batch=32, schedule="constant")  # resumable to more epochs
    first = fit(model, data, recipe, out_dir=tmp_path, quiet=True, checkpoint_format="safetensors")
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000001.json", "ckpt-000001.safetensors"]
    tree = {"params": first.params, "state": first.state}
    on_disk, _ = safetensors.load(tmp_path / "ckpt-000001.safetensors")  # as another tool would read it
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        np.testing.assert_array_equal(on_disk[checkpoint.path_name(path)], leaf)  # exactly what training left
    longer = fit(model, data, replace(recipe, epochs=2), out_dir=tmp_path, quiet=True, resume=True,
                 checkpoint_format="safetensors")
    assert len(longer.history) == 2 and longer.history[0] == first.history[0]
    with pytest.raises(ValueError, match="checkpoint_format"):
        fit(model, data, TrainConfig(epochs=1, batch=32), checkpoint_format="pt")
