"""Our linear evaluation (``eval.linear=paper``) steps equal the official ones (google-research/simclr ``tf2/``).

The official linear evaluation is fine-tuning with ``--fine_tune_after_block=4 --zero_init_logits_layer``
(``ft_proj_selector=0``): a ``stop_gradient`` follows the encoder's pooled output and its layers get
``trainable=False``, so only ``head_supervised`` (and the unused projection head) is trained. The README's
recipe uses ``--optimizer=momentum`` (Keras 2 ``SGD(nesterov=True)``) with ``add_weight_decay`` decaying
every trainable non-BN variable, the head's bias included; ``--optimizer=lars`` is compared too. The
official side is run as ``tests/test_official_steps.py`` does (``run.py``'s ``single_step``,
``WarmUpAndCosineDecay`` with N examples); its initial weights reach our encoder through our importer
(``simclrv2.official.tf_import``).

Found here: ``trainable=False`` is set on the official ``BatchNormRelu`` wrappers, not on the Keras
``BatchNormalization`` layers they create, so the frozen encoder still runs its BatchNorm in TRAINING mode:
the features use the batch's statistics and the moving statistics update (momentum 0.9) at every step, and
the evaluation afterwards (``training=False``) uses them. Ours does so with ``eval.encoder_bn=batch`` (on a copy
of the encoder; the default, ``frozen``, keeps the encoder in eval mode).

Our side is ``eval.linear.train_linear_head``, what ``paper_linear_eval`` runs for ``eval.linear=paper``
(``evaluate`` and the pipeline call it), with the augmentation replaced by the official side's fixed views
(the ``views=`` seam). Compared: the loss of each of K steps (within 1e-5 relative), the head's kernel and
bias after K steps (within 1e-4 absolute), every encoder tensor after K steps (within 1e-4: weights unchanged
on both sides, ours bit-equal to the start; BN moving statistics updated K times), and then the whole
``paper_linear_eval`` with ``encoder_bn=batch``: its scores of evaluation images against the official model's
logits after the K steps (within 1e-4), the encoder handed over left untouched.
Not compared: the official projection head, which this mode also carries along (its kernels decay under
``add_weight_decay``, its BNs update their statistics) but which ``head_supervised`` never reads with
``ft_proj_selector=0``; our linear evaluation has no projection head.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from simclrv2.data.datasets import ImageSet
from simclrv2.data.feed import chunks
from simclrv2.eval.linear import paper_linear_eval, train_linear_head
from test_official_steps import (ARCHS, CLASSES, COMMON, K, N, FixedViews, flags, image_set, imported,  # noqa: F401
                                 o, official_model, official_steps, our_config, random_views, to_torch)

# sqrt scaling: peak 0.03 x sqrt(8) = 0.085; one warmup epoch and cosine decay make the lr change every step
# (where torch's Nesterov SGD and Keras's differ); weight_decay 1.0 so that the decay of the bias shows in the
# losses (at 0.1 it moves them by < 1e-5).
LINEAR = dict(learning_rate=0.03, learning_rate_scaling="sqrt", warmup_epochs=1, weight_decay=1.0, momentum=0.9)
OPTIMIZERS = {"momentum": "sgd", "lars": "lars"}  # official --optimizer: ours eval.optimizer


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("arch", [pytest.param("r18_cifar"), pytest.param("r50_sk1", marks=pytest.mark.slow)])
def test_linear_eval_steps_equal_the_official(o, flags, arch, optimizer, tmp_path, monkeypatch):
    # The official code was written for TF 2.3, whose tf.keras.optimizers.SGD (OptimizerV2, now
    # ``optimizers.legacy.SGD``) calls the schedule with a float step; Keras 2.11+'s SGD passes the int64
    # ``iterations``, which WarmUpAndCosineDecay cannot divide. Same update rule (``ResourceApplyKerasMomentum``).
    monkeypatch.setattr(o.tf.keras.optimizers, "SGD", o.tf.keras.optimizers.legacy.SGD)
    flags(**{**COMMON, "optimizer": optimizer}, **ARCHS[arch], **LINEAR, train_mode="finetune",
          lineareval_while_pretraining=False, fine_tune_after_block=4, ft_proj_selector=0, temperature=0.1)
    size = ARCHS[arch]["image_size"]
    model = official_model(o, seed=6)
    net, meta = imported(o, model, tmp_path / "start").pretrain
    encoder = net.encoder.eval()  # as evaluate and the pipeline hand it over
    start = copy.deepcopy(encoder.state_dict())
    batches = random_views(size, K, 7)
    labels = (np.arange(N) % CLASSES).astype(np.int64)
    theirs = official_steps(o, model, batches, labels)
    val = image_set(size).images.flip(0)
    val_views = torch.cat(list(chunks(val, 64)))  # our evaluation views, given to both sides
    _, their_scores = model(o.tf.constant(val_views.permute(0, 2, 3, 1).numpy()), training=False)

    # The official encoder runs its BatchNorm in TRAINING mode here: ``trainable=False`` is set on the
    # ``BatchNormRelu`` wrappers, not on the Keras BatchNormalization inside, so the features use batch
    # statistics and the moving statistics update (its weights do not train): ``eval.encoder_bn=batch``.
    cfg = our_config(meta, "eval", LINEAR, linear="paper", optimizer=OPTIMIZERS[optimizer], encoder_bn="batch")
    images: ImageSet = image_set(size)
    trained = copy.deepcopy(encoder).train()  # what paper_linear_eval does with encoder_bn=batch
    head, ours = train_linear_head(trained.forward_features, images.images, images.labels,
                                   encoder.num_features, CLASSES, cfg, torch.device("cpu"),
                                   views=FixedViews([to_torch(b) for b in batches]))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)

    kernel, bias = (v.numpy() for v in model.supervised_head.trainable_variables)
    assert np.abs(kernel).max() > 1e-2 and np.abs(bias).max() > 1e-3  # the head learnt something
    np.testing.assert_allclose(head.weight.detach().numpy(), kernel.T, atol=1e-4, rtol=0)
    np.testing.assert_allclose(head.bias.detach().numpy(), bias, atol=1e-4, rtol=0)

    after = imported(o, model, tmp_path / "after").pretrain[0].encoder.state_dict()
    moved = 0
    for k, v in trained.state_dict().items():  # weights frozen on both sides; moving statistics updated K times
        if "num_batches_tracked" in k:
            continue
        moved += "running" in k and not torch.equal(v, start[k])
        assert "running" in k or torch.equal(v, start[k]), k
        np.testing.assert_allclose(v.numpy(), after[k].numpy(), atol=1e-4, rtol=0, err_msg=k)
    assert moved > 0

    # The whole protocol as evaluate runs it: scores of evaluation images after training, with the statistics
    # the encoder ended with (official: model(..., training=False)); the encoder handed over is left untouched.
    scores = paper_linear_eval(encoder.forward_features, images.images, images.labels,
                               torch.zeros(len(val), encoder.num_features), CLASSES, cfg, torch.device("cpu"),
                               views=FixedViews([to_torch(b) for b in batches]), encoder=encoder, val_images=val)
    np.testing.assert_allclose(scores.numpy(), their_scores.numpy(), atol=1e-4, rtol=0)
    assert all(torch.equal(v, start[k]) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("keras", ["SGD", "legacy.SGD"])
def test_keras_nesterov_sgd_equals_keras(o, keras):
    """``KerasNesterovSGD`` against Keras 2's ``SGD(momentum=0.9, nesterov=True)`` (both classes) with the
    learning rate changed at every step, where torch's ``SGD(nesterov=True)`` differs (float64 variables; Keras
    keeps the rate and the momentum in float32: 0.9 rounds by 1e-8, hence rtol 1e-6)."""
    from simclrv2.optim import KerasNesterovSGD

    tf = o.tf
    rng = np.random.default_rng(0)
    start, grads, rates = rng.normal(size=(3, 4)), rng.normal(size=(6, 3, 4)), [0, 0.5, 1, 0.75, 0.25, 0.0625]
    sgd = functools.reduce(getattr, keras.split("."), tf.keras.optimizers)
    optimizer = sgd(learning_rate=tf.Variable(0.0), momentum=0.9, nesterov=True)
    theirs = tf.Variable(start)
    ours = torch.nn.Parameter(torch.tensor(start))
    mine = KerasNesterovSGD([ours], lr=0.0, momentum=0.9)
    torch_ours = torch.nn.Parameter(torch.tensor(start))
    torch_sgd = torch.optim.SGD([torch_ours], lr=0.0, momentum=0.9, nesterov=True)
    for g, lr in zip(grads, rates):
        optimizer.learning_rate.assign(lr)
        optimizer.apply_gradients([(tf.constant(g), theirs)])
        for opt, p in ((mine, ours), (torch_sgd, torch_ours)):
            opt.param_groups[0]["lr"] = lr
            p.grad = torch.tensor(g)
            opt.step()
    np.testing.assert_allclose(ours.detach().numpy(), theirs.numpy(), rtol=1e-6, atol=0)
    assert np.abs(torch_ours.detach().numpy() - theirs.numpy()).max() > 1e-2  # what the class is for
