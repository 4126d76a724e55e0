"""models.fit: a model's output is one real prediction per row, checked at start and per batch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from models.fit import check_fits, inference_form, predictions_of
from models.runner import TorchRunner
from streams.errors import ModelOutputError, PredictionCountError


class Returns(nn.Module):
    def __init__(self, make: object) -> None:
        super().__init__()
        self.make = make

    def forward(self, x: torch.Tensor) -> object:
        return self.make(x)  # type: ignore[operator]


def exported(module: nn.Module, *, dynamic: bool = True) -> nn.Module:
    """``module`` as torch.export serves it: exported, saved and loaded back in a user's way."""
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    return torch.export.export(module, (torch.zeros(4, 3),), dynamic_shapes=shapes).module()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda x: (x[:, 0], x[:, 1]), "returned tuple, not a tensor"),
        (lambda x: {"score": x[:, 0]}, "returned dict, not a tensor"),
        (lambda x: torch.complex(x, x)[:, 0], "returned torch.complex64 predictions; expected real numbers"),
        (lambda x: x.reshape(x.shape[0], 3, 1, 1).expand(-1, 3, 2, 2), "of shape [1, 3, 2, 2]; expected (batch,)"),
        (lambda x: x.sum(), "returned 0 predictions for a batch of 1 inputs"),
        (lambda x: x.T, "returned 3 predictions for a batch of 1 inputs"),
    ],
)
def test_an_output_that_is_not_one_prediction_per_row_is_refused_with_what_it_was(make, why):
    with pytest.raises(ModelOutputError, match=re.escape(why)):
        check_fits(Returns(make), "odd", [(3,)])


def test_predictions_of_accepts_the_three_documented_shapes_and_counts_rows():
    assert predictions_of(torch.ones(4), 4, "m").shape == (4,)
    assert predictions_of(torch.ones(4, 1), 4, "m").shape == (4,)
    assert predictions_of(torch.ones(4, 3, dtype=torch.float64), 4, "m").dtype == np.float32
    assert predictions_of(torch.tensor([True, False]), 2, "m").tolist() == [1.0, 0.0]
    with pytest.raises(PredictionCountError, match="returned 3 predictions for a batch of 4 inputs"):
        predictions_of(torch.ones(3), 4, "m")


def test_a_program_exported_with_a_fixed_batch_size_is_refused_with_the_way_to_export_it():
    with pytest.raises(ModelOutputError, match=r"batch dimension dynamic: dynamic_shapes="):
        check_fits(exported(nn.Linear(3, 1), dynamic=False), "fixed", [(3,)])


def test_an_exported_program_is_served_as_exported_and_other_modules_in_eval_mode():
    plain = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.5))
    assert inference_form(plain) is plain and not plain.training
    program = exported(nn.Linear(3, 1).eval())
    with pytest.raises(NotImplementedError):
        program.eval()  # torch refuses; why the runner must not call it
    assert inference_form(program) is program


async def test_the_runner_serves_an_exported_program_with_a_dynamic_batch():
    torch.manual_seed(3)
    eager = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).eval()
    runner = TorchRunner(exported(eager), name="x", version="1", device="cpu", threads=1)
    try:
        runner.warm_up([(3,)], [1, 2, 64])
        x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
        scores = await runner.predict([x])
        assert np.allclose(scores, eager(torch.from_numpy(x))[:, 0].detach().numpy(), atol=1e-6)
    finally:
        await runner.aclose()


def test_a_model_in_training_mode_is_refused_whichever_way_it_was_saved():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    in_training = torch.export.export(net.train(), (torch.zeros(4, 3),), dynamic_shapes=({0: torch.export.Dim("b")},))
    with pytest.raises(ModelOutputError, match=r"training mode .* after model.eval\(\)"):
        check_fits(in_training.module(), "trained", [(3,)])
    check_fits(exported(net.eval()), "served", [(3,)])  # the same network exported in eval mode


def test_a_row_scored_with_the_batchs_statistics_is_refused():
    class BatchCentred(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean(dim=0))[:, 0]

    with pytest.raises(ModelOutputError, match="scores a row differently alone than in a batch"):
        check_fits(BatchCentred(), "centred", [(3,)])


def test_no_prediction_per_row_is_refused():
    with pytest.raises(ModelOutputError, match=r"returned no prediction per row \(shape \[1, 0\]\)"):
        check_fits(Returns(lambda x: x[:, :0]), "empty", [(3,)])
