from __future__ import annotations

import pytest
import torch

from scgraph_core.errors import ConfigError, TrainingError
from scgraph_core.params import from_dict
from scgraph_core.train import Stage, StopSignal, Trainer, TrainSpec, resolve_device, resolve_precision


def _toy_stage(epochs: int = 10, nan_at: int | None = None, scores=None) -> Stage:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def step(epoch):
        loss = torch.nn.functional.mse_loss(module(x), y)
        if nan_at is not None and epoch >= nan_at:
            loss = loss * float("nan")
        return {"mse": loss}

    evaluate = None
    if scores is not None:

        def evaluate():
            return {"val_score": scores.pop(0)}

    return Stage("toy", module, opt, step, epochs, evaluate=evaluate, score="val_score" if scores else None)


def test_device_and_precision_choices():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


def test_precision_name_is_the_trainers_choice():
    """What the Model page shows before a run is what the Trainer then computes in."""
    from scgraph_core.train import cpu_supports_bf16, precision_name

    for precision in ("auto", "fp32", "bf16"):
        shown = precision_name(precision, "cpu")
        assert shown == Trainer(TrainSpec(device="cpu", precision=precision)).precision_name
        assert shown == precision_name(precision, torch.device("cpu"))
    assert precision_name("fp32", "cpu") == "fp32" and precision_name("bf16", "cpu") == "bf16"
    assert precision_name("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert precision_name("auto", "mps") == "fp32"


def test_epoch_events_and_losses():
    events = []
    trainer = Trainer(TrainSpec(device="cpu"), callbacks=[events.append])
    outcome = trainer.run_stage(_toy_stage(5))
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert all("mse" in e["losses"] and e["seconds"] > 0 and e["peak_memory_mb"] > 0 for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert outcome.epochs_run == 5 and not outcome.stopped


def test_nan_loss_stops_with_clear_message():
    trainer = Trainer(TrainSpec(device="cpu"))
    with pytest.raises(TrainingError, match="loss became nan at epoch 3"):
        trainer.run_stage(_toy_stage(10, nan_at=3))


def test_a_rank_with_a_finite_loss_stops_when_another_diverged(monkeypatch):
    """Distributed, a rank whose own loss is finite must not go on to wait for a diverged rank's gradients."""
    from scgraph_core import distributed

    def another_rank_diverges_at_epoch_4(flag: bool) -> bool:
        calls.append(flag)
        return flag or len(calls) == 8  # any_rank is asked twice per epoch: the stop flag, then the loss

    calls: list[bool] = []
    monkeypatch.setattr(distributed, "any_rank", another_rank_diverges_at_epoch_4)
    trainer = Trainer(TrainSpec(device="cpu"))
    with pytest.raises(TrainingError, match="another training process became non-finite at epoch 4"):
        trainer.run_stage(_toy_stage(10))


def test_stop_from_another_thread_keeps_best_checkpoint():
    stop = StopSignal()
    seen = []

    def on_event(event):
        if event["kind"] == "epoch":
            seen.append(event["epoch"])
            if event["epoch"] == 3:
                stop.set()

    spec = from_dict(TrainSpec, {"device": "cpu", "eval_every": 1})
    trainer = Trainer(spec, callbacks=[on_event], stop=stop)
    stage = _toy_stage(50, scores=[0.1, 0.9, 0.2, 0.3])
    outcome = trainer.run_stage(stage)
    assert outcome.stopped and outcome.epochs_run == 3 and seen == [1, 2, 3]
    assert outcome.best_epoch == 2


def test_best_checkpoint_is_a_copy_and_restored():
    spec = from_dict(TrainSpec, {"device": "cpu", "eval_every": 1, "restore_best": True})
    trainer = Trainer(spec)
    stage = _toy_stage(4, scores=[0.5, 0.9, 0.1, 0.2])
    weights_at = {}

    original_step = stage.step

    def step(epoch):
        weights_at[epoch - 1] = stage.module.weight.detach().clone()
        return original_step(epoch)

    stage.step = step
    trainer.run_stage(stage)
    # Best was after epoch 2, i.e. the weights the third step started from.
    assert torch.equal(stage.module.weight, weights_at[2])


def test_patience_stops_early():
    spec = from_dict(TrainSpec, {"device": "cpu", "eval_every": 1, "patience": 2})
    events = []
    outcome = Trainer(spec, callbacks=[events.append]).run_stage(
        _toy_stage(20, scores=[0.9, 0.1, 0.1, 0.1, 0.1])
    )
    assert outcome.epochs_run == 3
    assert any(e["kind"] == "early_stop" for e in events)


def test_cpu_runs_use_deterministic_algorithms_and_the_flag_does_not_leak():
    # On the CPU the trainer always turns PyTorch's deterministic algorithms on (a seeded run repeats); a
    # later seed_everything with deterministic=False turns the process-wide flag off again.
    from scgraph_core.train import seed_everything

    try:
        torch.use_deterministic_algorithms(False)
        Trainer(TrainSpec(device="cpu", deterministic=False))
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_stage_not_saved_is_neither_kept_nor_replayed():
    """Stage(saved=False) (scGNN's per-cluster autoencoders): the run folder does not keep its weights, and
    ``runs finish`` (replay) trains it again instead of loading it; saved stages keep their indices."""
    kept, replayed = [], []
    trainer = Trainer(TrainSpec(eval_every=0))
    trainer.keep = lambda index, stage, outcome: kept.append((index, stage.name))
    first, second, third = _toy_stage(3), _toy_stage(3), _toy_stage(3)
    second.saved = False
    for stage in (first, second, third):
        trainer.run_stage(stage)
    assert kept == [(0, "toy"), (2, "toy")]

    replay = Trainer(TrainSpec(eval_every=0))

    def load(index, stage):
        replayed.append(index)
        return trainer_outcome

    trainer_outcome = trainer.run_stage(_toy_stage(1))
    replay.replay = load
    a, b = _toy_stage(3), _toy_stage(3)
    b.saved = False
    out_a, out_b = replay.run_stage(a), replay.run_stage(b)
    assert replayed == [0]  # the unsaved stage was trained, not loaded
    assert out_a is trainer_outcome and out_b.epochs_run == 3
