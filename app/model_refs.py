"""A model named in a word, as ``ModelSpec``: what ``sluice backfill --model`` takes (and the model a
backfill's checkpoint records), and what the test kit (``app.testing``) takes.

Importable without the Faust app or a config: these only read the reference, nothing is opened
or imported (a file or module is loaded later, by ``models.loading``, if the caller chooses to).
"""

from __future__ import annotations

from pathlib import Path

from app.config import PipelineConfig
from models.registry import DEMO_MODELS
from models.spec import ModelSpec
from streams.errors import CommandLineError


def plain_model_spec(ref: str) -> ModelSpec | None:
    """``ref`` as a demo name, ``package.module:Class=weights.pt`` or a torch.export archive
    (``.pt2``); None when it is none of them. The forms that need no opt-in from the config."""
    if ref in DEMO_MODELS:
        return ModelSpec(demo=ref)
    if ":" in ref and "=" in ref:
        cls, weights = ref.split("=", 1)
        return ModelSpec(module_class=cls, state_dict=Path(weights))
    if ref.endswith(".pt2"):
        return ModelSpec(exported=Path(ref))
    return None


def model_spec(ref: str | None, pipeline: PipelineConfig) -> ModelSpec:
    """``--model``: a demo name, an exported program (.pt2), a TorchScript file (.ts), or
    ``package.module:Class=weights.pt``; none means the pipeline's own model.

    A TorchScript file is code, so as for a model swap, the opt-in is the operator's, in the
    config: ``trust_torchscript = true`` on the pipeline's model. A flag would let whoever
    types the command (or wrote a checkpoint that a ``--resume`` reads) decide instead."""
    if not ref:
        return pipeline.model
    spec = plain_model_spec(ref)
    if spec is not None:
        return spec
    if ref.endswith(".ts"):
        if not pipeline.model.trust_torchscript:
            raise CommandLineError(
                f"--model {ref!r}: a TorchScript file is code that runs when loaded; it is used only where "
                f"the config trusts it: trust_torchscript = true in [pipelines.{pipeline.name}.model]"
            )
        return ModelSpec(torchscript=Path(ref), trust_torchscript=True)
    raise CommandLineError(
        f"--model {ref!r}: expected a demo model ({', '.join(DEMO_MODELS)}), a .pt2 or .ts file, "
        "or package.module:Class=weights.pt"
    )
