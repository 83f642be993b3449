"""torch as the oracle of the optimizer update: tunedeck's step (core.step.TrainStep: clipping, bias-corrected
AdamW with weight decay), eager and compiled (`compile_update`, what "auto" does on GPUs), against
`torch.nn.utils.clip_grad_norm_` + `torch.optim.AdamW` given the same gradients, over three steps.

Tolerance, from float32 arithmetic (ε = 2^-23): the gradient norm is a sum of N ≈ 1.3e4 squares, relative error
≲ √N·ε ≈ 1.4e-5, which scales the clipped gradient; Adam's m̂/(√v̂ + eps) is scale-free for elements far above
eps, so each element's update lr·m̂/(√v̂ + eps) carries ≲ 1e-4 relative error of lr (with margin); the parameter
itself rounds at ε·|p| a step. Three steps: 3·(1e-4·lr + ε·|p|).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the oracle needs torch (pip install -e '.[oracle]'); not installed")

from tests.conftest import F32_EPS  # noqa: E402

LR, WD, MAX_NORM, STEPS = 1e-3, 0.01, 1e-3, 3


@pytest.mark.parametrize("compile_update", [False, True], ids=["eager", "compiled"])
def test_update_matches_torch_adamw(demo_model: Path, compile_update: bool) -> None:
    from mlx.utils import tree_flatten

    from tunedeck.core import config as C
    from tunedeck.core import data, demo, objectives
    from tunedeck.core.batching import tokenize
    from tunedeck.core.model import load_for_training
    from tunedeck.core.step import TrainStep, optimizer

    cfg = C.preset("demo")
    cfg.model.path, cfg.model.dtype = str(demo_model), "float32"
    cfg.lora.dropout = 0.0
    t = cfg.train
    t.method, t.learning_rate, t.lr_schedule, t.warmup_steps = "sft", LR, "constant", 0
    t.weight_decay, t.max_grad_norm, t.optimizer = WD, MAX_NORM, "adamw"
    loaded = load_for_training(cfg.model, cfg.lora, "float32", 0)
    model = loaded.model
    model.eval()
    seqs = tokenize(loaded.tokenizer, data.load(demo.sample_dataset()).examples[:12], 512, kto=False, seed=0)
    step = TrainStep(objectives.for_config(cfg), model, optimizer(cfg, STEPS), compiled=False,
                     compile_update=compile_update)

    names = [k for k, _ in tree_flatten(model.trainable_parameters())]
    theirs = [torch.tensor(np.array(v), requires_grad=True) for _, v in tree_flatten(model.trainable_parameters())]
    start = [p.detach().clone() for p in theirs]
    opt = torch.optim.AdamW(theirs, lr=LR, weight_decay=WD, betas=(0.9, 0.999), eps=1e-8)
    clipped = []
    for i in range(STEPS):
        idx = np.arange(4 * i, 4 * i + 4)
        batch = step.batch(seqs, idx, step_tokens=seqs.trained_tokens(idx))
        _, grad = step(batch, None, update=False)  # this step's gradient, at the parameters it updates
        grads = dict(tree_flatten(grad))
        for name, p in zip(names, theirs):
            p.grad = torch.tensor(np.array(grads[name]))
        clipped.append(float(torch.nn.utils.clip_grad_norm_(theirs, MAX_NORM)))
        opt.step()
        step(batch, None, update=True)

    ours = dict(tree_flatten(model.trainable_parameters()))
    assert min(clipped) > 10 * MAX_NORM  # clipping acted at every step
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(theirs, start))
    assert moved > 0.5 * LR  # the parameters moved by about lr a step
    for name, p in zip(names, theirs):
        want = p.detach().numpy()
        np.testing.assert_allclose(np.array(ours[name]), want, rtol=0,
                                   atol=STEPS * (1e-4 * LR + F32_EPS * float(np.abs(want).max())), err_msg=name)
