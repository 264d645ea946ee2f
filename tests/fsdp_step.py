"""One stage-2 training step of a LLaVA checkpoint under FSDP2 (`torch.distributed.fsdp.fully_shard`) over gloo,
run by `tests/test_distributed.py` with `torchrun`: the wrap units are those the shipped `fsdp.yaml` names, as
accelerate wraps them (each unit, then the root).

accelerate turns FSDP on for GPU launches only, so `llava train` cannot run FSDP on a CPU; this checks what FSDP
itself does to the model: sharding, the frozen tower inside the root unit, gradients reduced across ranks.

Usage: torchrun --nproc_per_node 2 tests/fsdp_step.py CHECKPOINT BATCH.pt OUTPUT.pt
"""

import sys

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from modeling_llava import LlavaPluginForConditionalGeneration
from trainers.stages import apply_freeze, get_stage
from trainers.train import RECIPES


def main(checkpoint: str, batch_file: str, output: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    config = yaml.safe_load((RECIPES / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    wrap = set(config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    model = LlavaPluginForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    apply_freeze(model, get_stage("stage2"))
    units = [module for module in model.modules() if type(module).__name__ in wrap]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = torch.load(batch_file)
    rows = slice(rank * len(batch["input_ids"]) // world, (rank + 1) * len(batch["input_ids"]) // world)
    images = batch.pop("images_per_row")
    first_image = sum(images[: rows.start])
    pixels = batch.pop("pixel_values")[first_image : first_image + sum(images[rows])]
    loss = model(**{name: value[rows] for name, value in batch.items()}, pixel_values=pixels).loss
    loss.backward()
    optimizer.step()
    # The shard of every wrapped unit's weights on this rank: 1/world of the unit.
    local = sum(p.to_local().numel() for unit in units for p in unit.parameters())
    whole = sum(p.numel() for unit in units for p in unit.parameters())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save(
            {"state": state, "losses": torch.stack(losses), "local": local, "whole": whole, "units": len(units)},
            output,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
