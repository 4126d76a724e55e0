"""Whether a model's output fits the pipeline: one prediction per input row, in real numbers.

The pipeline writes each row's prediction as a JSON number (``(batch,)`` or ``(batch, 1)``)
or a list of numbers (``(batch, k)``). Anything else (a tuple or dict of tensors, complex
numbers, a tensor of three or more dimensions, a batch dimension that is not the first) is
refused with one line: at start, before the first event, by :func:`check_fits`, and on every
batch by :func:`predictions_of`, so a model whose output depends on its inputs is caught too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models.export_archive import reason
from streams.errors import ModelOutputError, PredictionCountError

# Rows in the probe batches: two sizes, so a model exported with a fixed batch size (or one
# that reduces over the batch) is caught at start, not at the first batch of another size.
PROBE_ROWS = (1, 3)


def predictions_of(out: object, rows: int, model: str) -> np.ndarray:
    """``out`` as a float32 array of ``rows`` predictions (``(rows,)`` or ``(rows, k)``), or
    ``ModelOutputError`` saying what the model returned instead."""
    if not isinstance(out, torch.Tensor):
        raise ModelOutputError(
            f"model {model} returned {type(out).__name__}, not a tensor: forward must return one tensor "
            "of predictions, (batch,), (batch, 1) or (batch, k)"
        )
    if out.dtype.is_complex:
        raise ModelOutputError(f"model {model} returned {out.dtype} predictions; expected real numbers")
    result = out.detach().float().cpu().numpy()
    if result.ndim == 2 and result.shape[1] == 1:
        result = result[:, 0]
    if result.ndim == 0 or result.shape[0] != rows:
        got = 0 if result.ndim == 0 else result.shape[0]
        raise PredictionCountError(f"model {model} returned {got} predictions for a batch of {rows} inputs")
    if result.ndim == 2 and result.shape[1] == 0:
        raise ModelOutputError(f"model {model} returned no prediction per row (shape {list(out.shape)})")
    if result.ndim > 2:
        raise ModelOutputError(
            f"model {model} returned predictions of shape {list(out.shape)}; "
            "expected (batch,), (batch, 1) or (batch, k)"
        )
    return result


def inference_form(module: nn.Module) -> nn.Module:
    """``module`` in eval mode (dropout off, batch norm on its running statistics).

    A ``torch.export`` program's module is already in the form it was exported in, and
    refuses ``eval()`` (torch 2.15 raises ``NotImplementedError``): it is served as it is,
    which is why the README says to export a module in eval mode.
    """
    try:
        return module.eval()
    except NotImplementedError:
        return module


def check_fits(module: nn.Module, model: str, input_shapes: Sequence[tuple[int, ...]]) -> None:
    """Score zero-valued batches of the pipeline's inputs on the CPU; ``ModelOutputError``
    unless every batch gets one prediction per row. ``module`` is put in its inference form."""
    module = inference_form(module)
    for rows in PROBE_ROWS:
        batch = [torch.zeros((rows, *shape), dtype=torch.float32) for shape in input_shapes]
        try:
            with torch.inference_mode():
                out = module(*batch)
        except Exception as exc:  # Broad on purpose: a user's forward can raise anything
            shapes = ", ".join(str([rows, *shape]) for shape in input_shapes)
            hint = (
                " (a torch.export program needs its batch dimension dynamic: "
                'dynamic_shapes=({0: torch.export.Dim("batch")},))'
                if "size()[0]" in str(exc) or "shape[0]" in str(exc)
                else ""
            )
            raise ModelOutputError(
                f"model {model} cannot score a batch of inputs shaped {shapes}: {reason(exc)}{hint}"
            ) from exc
        predictions_of(out, rows, model)
    check_deterministic(module, model, input_shapes)


# Rows of the seeded probe, and how far a row's prediction may move with its batch's other rows
# (kernels for other batch sizes sum in other orders; float32 then differs in the last bits).
PROBE_SEED, PROBE_BATCH = 20261206, 4
ROW_TOLERANCE = 1e-4


def check_deterministic(module: nn.Module, model: str, input_shapes: Sequence[tuple[int, ...]]) -> None:
    """The same inputs twice give the same predictions, and a row alone the same as in a batch.

    A module exported or saved in training mode fails this: dropout draws anew on every call, and
    batch norm normalises with the batch's statistics, so an event's score would depend on chance
    and on the events batched with it. Zero-valued probes cannot show either; seeded random ones do.
    """
    generator = torch.Generator().manual_seed(PROBE_SEED)
    batch = [torch.randn((PROBE_BATCH, *shape), generator=generator) for shape in input_shapes]
    with torch.inference_mode():
        first = predictions_of(module(*batch), PROBE_BATCH, model)
        again = predictions_of(module(*batch), PROBE_BATCH, model)
        alone = predictions_of(module(*[x[:1] for x in batch]), 1, model)
    hint = "; is it in training mode (dropout, batch norm)? save or export it after model.eval()"
    if not np.array_equal(first, again, equal_nan=True):
        raise ModelOutputError(f"model {model} gives different predictions for the same inputs{hint}")
    if not np.allclose(first[:1], alone, rtol=ROW_TOLERANCE, atol=ROW_TOLERANCE, equal_nan=True):
        raise ModelOutputError(
            f"model {model} scores a row differently alone than in a batch: each event's prediction "
            f"would depend on the events batched with it{hint}"
        )
