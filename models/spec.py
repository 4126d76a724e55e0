"""Which model a pipeline serves, as the config file says it: a description, no torch.

Reading the config builds these; only loading one (:mod:`models.loading`) needs torch, so
commands that read the config without serving a model (``sluice watch``, ``sluice produce``)
never import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where the demo models' trained weights live (see models.registry), and where a model swap
# may load from when the config names no folder and no model file.
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """Which model a pipeline serves.

    Exactly one of ``demo``, ``exported``, ``torchscript`` or ``module_class`` is set.
    """

    demo: str | None = None
    exported: Path | None = None  # torch.export.save(...) archive, usually .pt2
    torchscript: Path | None = None
    module_class: str | None = None  # "package.module:ClassName"
    state_dict: Path | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    version: str | None = None
    # TorchScript runs the code in the file; only an explicit opt-in in the config sets this.
    trust_torchscript: bool = False
    # Set for a model swap: the file, as opened, must still lie inside these folders (no
    # symlink followed at the last step), so what was checked is what is loaded.
    confine_to: tuple[Path, ...] = ()

    def describe(self) -> str:
        if self.demo:
            return f"demo model {self.demo!r}"
        if self.exported:
            return f"exported program {self.exported}"
        if self.torchscript:
            return f"TorchScript file {self.torchscript}"
        return f"{self.module_class} with weights {self.state_dict}"
