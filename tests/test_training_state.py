"""Checkpointed training state: restored on the training device, loaded without running pickled code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.config import load_config
from orchestrator.errors import CheckpointError
from tests_paths import REPO
from trainers.loop import STATE_FILE, History, build_training_state, save_state
from trainers.loop_inputs import LoopInputs


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A real checkpoint folder after one AdamW step of a small student on the CPU."""
    config = load_config(REPO / "configs" / "fmnist-hard.yaml", {"model.name": "resnet18_small"})
    state = build_training_state(LoopInputs(config, num_classes=10), torch.device("cpu"), None)
    state.model(torch.randn(4, 1, 28, 28)).sum().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.history = History(epochs_done=1, optimizer_steps=4)
    save_state(tmp_path, state, final=False)
    return tmp_path


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_restored_optimizer_state_lives_on_the_parameters_device(checkpoint):
    """A GPU resume needs the optimizer's moments on the GPU with the weights. The only other device
    a CPU machine has is "meta": the same code path, checked without a GPU."""
    config = load_config(REPO / "configs" / "fmnist-hard.yaml", {"model.name": "resnet18_small"})
    state = build_training_state(LoopInputs(config, num_classes=10), torch.device("meta"), checkpoint)
    optimizer, scheduler, history = state.optimizer, state.scheduler, state.history
    assert history.epochs_done == 1 and history.optimizer_steps == 4
    assert scheduler.last_epoch == 1
    moments = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert param.device.type == "meta"
            for name, value in optimizer.state[param].items():
                if torch.is_tensor(value) and name != "step":  # torch keeps AdamW's step count on the CPU
                    assert value.device == param.device, name
                    moments += 1
    assert moments > 0


def test_checkpoint_is_loaded_as_weights_only(checkpoint, tmp_path):
    """A state file that would run code when unpickled is refused (shared cluster storage)."""
    state = torch.load(checkpoint / STATE_FILE, weights_only=True)
    state["history"]["evil"] = Exploit()
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save(state, bad / STATE_FILE)
    config = load_config(REPO / "configs" / "fmnist-hard.yaml", {"model.name": "resnet18_small"})
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as refused:
        build_training_state(LoopInputs(config, num_classes=10), torch.device("cpu"), bad)
    assert f"delete that checkpoint folder {bad}" in str(refused.value) and "--force" in str(refused.value)
    assert "weights_only" not in str(refused.value)  # never torch's advice to load it with code execution on


class Exploit:
    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))
