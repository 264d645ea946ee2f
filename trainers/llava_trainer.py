"""TRL's `SFTTrainer` with the two things LLaVA needs and TRL lacks.

1. A learning rate of its own for the projector (the original's `mm_projector_lr`): LLaVA's LoRA recipe trains the
   adapters at 2e-4 but the projector, which is trained in full, at 2e-5.
2. Stage 1's projector-only artifact (the original's `mm_projector.bin`) written next to every checkpoint it saves,
   so stage 2 can start from the backbones plus a few MB.

Everything else (data collation, loss masking, PEFT wrapping, checkpointing, resuming) is TRL's and transformers'.
"""

from typing import Any

import torch
from trl import SFTTrainer

from .projector_artifact import save_projector

PROJECTOR = "multi_modal_projector"


class LlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` for LLaVA.

    Args:
        projector_lr (`float`, *optional*):
            Learning rate of the projector's parameters; the others use `args.learning_rate`. `None` keeps one rate.
        projector_provenance (`dict`, *optional*):
            When given, every save also writes the projector artifact with this provenance (stage 1 does this).
        kwargs:
            Everything `SFTTrainer` takes.
    """

    def __init__(
        self,
        *args,
        projector_lr: float | None = None,
        projector_provenance: dict[str, Any] | None = None,
        **kwargs,
    ):
        self.projector_lr = projector_lr
        self.projector_provenance = projector_provenance
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The default optimizer, with the projector's parameters moved into groups at `projector_lr`."""
        optimizer = super().create_optimizer(model)
        if self.projector_lr is None:
            return optimizer
        opt_model = self.model if model is None else model
        projector_params = {id(p) for name, p in opt_model.named_parameters() if PROJECTOR in name}
        groups = []
        for group in optimizer.param_groups:
            params = group.pop("params")
            for is_projector in (False, True):
                selected = [p for p in params if (id(p) in projector_params) == is_projector]
                if selected:
                    lr = self.projector_lr if is_projector else group["lr"]
                    groups.append({**group, "params": selected, "lr": lr})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.projector_provenance is not None and self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            save_projector(model, output_dir or self.args.output_dir, **self.projector_provenance)

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the record id through the column filter, so that an unreadable image is reported by its record.
        super()._set_signature_columns_if_needed()
        if "id" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "id"]


__all__ = ["LlavaSFTTrainer"]
