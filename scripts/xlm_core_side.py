"""xlm-core's half of scripts/cross_check_xlm_core.py, run in a venv that holds xlm-core and xlm-models (their
package is also named `xlm`, so this program imports nothing of ours and runs in its own process, `python -I`).

    python -I scripts/xlm_core_side.py make WORK   # each family: train, checkpoint, export, record outputs
    python -I scripts/xlm_core_side.py load WORK   # load the dirs WORK/exports.json names, record outputs

`make` builds each family's network with xlm-core's own class inside xlm-core's own `Harness` (the Lightning
module every xlm-core run trains), trains it a few steps under Lightning with xlm-core's `EMACallback`, and writes
`last.ckpt` with `Trainer.save_checkpoint` (Lightning's checkpoint with the callback's `ema` entry, as
ModelCheckpoint writes it mid-run). The Harness's datamodule, tokenizer, predictor and loss are stand-ins: they
hold no weights, and the checkpoint layout, not the objective, is under test. The checkpoint is read back with
`Harness.from_checkpoint(apply_ema=True)`, the path of xlm-core's push_to_hub command, whose network is then
exported with `save_pretrained` (what `push_to_hub` uploads) and reloaded with `from_pretrained(strict=True)`.
Every model runs on fixed inputs, called the way its family's loss calls it; WORK/manifest.json lists the files.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import hydra
import lightning as L
from xlm.harness import Harness
from xlm.utils import omegaconf_resolvers
from xlm.utils.ema import EMACallback

VOCAB, DIM, LAYERS, HEADS, MAX_LENGTH, SEQ, BATCH = 37, 32, 2, 4, 16, 12, 3
PAD, MASK = 0, 1
TRAIN_STEPS = 4

#: the xlm-models class of each family and its constructor arguments, as its model YAML gives them (the sizes
#: drawn from the tokenizer stay interpolations in the checkpoint's hyper-parameters, as in a real run).
#: ARLM, MLM and MDLM rotate part of each head (rotary_emb_dim 4 of 8), ILM whole heads.
MODELS: dict[str, dict[str, Any]] = {
    "arlm": {"_target_": "arlm.model_arlm.RotaryTransformerARLMModel", "activation": "relu", "rotary_emb_dim": 4,
             "final_layer_without_normalization": False},
    "mlm": {"_target_": "mlm.model_mlm.RotaryTransformerMLMModel", "mask_idx": "${tokenizer:mask_token_id}",
            "activation": "gelu", "rotary_emb_dim": 4, "final_layer_without_normalization": False},
    "ilm": {"_target_": "ilm.model_ilm.RotaryTransformerILMModelWithStoppingClassification",
            "mask_idx": "${tokenizer:mask_token_id}", "activation": "relu", "rotary_emb_dim": 8,
            "final_layer_without_normalization": True},
    "mdlm": {"_target_": "mdlm.model_mdlm.MDLMModel", "mask_idx": "${tokenizer:mask_token_id}", "activation": "relu",
             "rotary_emb_dim": 4, "d_cond": 16},
}
SHARED_ARGS = {"num_embeddings": "${tokenizer:full_vocab_size}", "d_model": DIM, "num_layers": LAYERS, "nhead": HEADS,
               "padding_idx": "${tokenizer:pad_token_id}", "dim_feedforward": "${eval:${.d_model}*4}", "dropout": 0.1,
               "layer_norm_eps": 1e-5, "max_length": "${predictor.max_length}", "force_flash_attn": False}


def network_outputs(family: str, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network called as its family's loss calls it (xlm-models' loss_arlm.py, loss_mlm.py, loss_ilm.py,
    loss_mdlm.py): ARLM with the causal & padding mask, the others with the padding mask, all at the positions
    the batch carries."""
    ids, mask, positions = batch["input_ids"], batch["attention_mask"], batch["positions"]
    if family == "arlm":
        causal = torch.tril(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool))
        return {"logits": model(ids, mask[:, None, :] & causal, positions)}
    if family == "ilm":
        logits, stop = model(ids, mask, positions=positions, cls_position=batch["cls_position"])
        return {"logits": logits, "stop_logits": stop}
    if family == "mdlm":
        return {"logits": model(ids, batch["sigma"], mask, positions)}
    return {"logits": model(ids, mask, positions)}


def make_batch(family: str, seed: int) -> dict[str, torch.Tensor]:
    """Random tokens, one right-padded row and (where the family's attention allows it) one left-padded row, with
    positions as the family's loss computes them. ARLM and ILM keep padding on the right: a left pad has no key to
    attend to under ARLM's causal mask, and ILM reads its stop head at column 0."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (BATCH, SEQ), generator=generator)
    mask = torch.ones(BATCH, SEQ, dtype=torch.bool)
    mask[1, SEQ - 4:] = False
    if family not in ("arlm", "ilm"):
        mask[2, :3] = False
    ids = ids.masked_fill(~mask, PAD)
    counted = mask.long().cumsum(1) - 1
    positions = {"arlm": counted * mask, "ilm": counted.clamp(min=0)}.get(family, counted.clamp(min=0) * mask)
    batch = {"input_ids": ids, "attention_mask": mask, "positions": positions,
             "targets": torch.randint(2, VOCAB, (BATCH, SEQ), generator=generator)}
    if family == "ilm":
        batch["cls_position"] = torch.zeros(BATCH, dtype=torch.long)
        batch["stop_targets"] = torch.randint(0, 2, (BATCH,), generator=generator)
    if family == "mdlm":
        batch["sigma"] = torch.rand(BATCH, generator=generator) * 3
    return batch


class StandInLoss:
    """The Harness's loss for the few training steps that make the raw weights and their EMA differ:
    cross-entropy of the network's outputs against random targets."""

    def __init__(self, family: str, model: Any = None, tokenizer: Any = None) -> None:
        self.family, self.model, self.tokenizer = family, model, tokenizer

    def __call__(self, batch: dict[str, torch.Tensor], *args: Any) -> dict[str, torch.Tensor]:
        out = network_outputs(self.family, self.model, batch)
        mask = batch["attention_mask"]
        loss = F.cross_entropy(out["logits"][mask], batch["targets"][mask])
        if "stop_logits" in out:
            loss = loss + F.cross_entropy(out["stop_logits"], batch["stop_targets"])
        return {"loss": loss}


class DataModuleStandIn:
    """What the Harness asks of its datamodule besides the data, which the training loop is given directly."""

    noise_schedule = None
    dataloader_names = {"train": {0: "lm"}, "val": {0: "lm"}, "test": {0: "lm"}, "predict": {0: "prediction"}}

    def print_batch(self, *args: Any) -> None:
        pass


TOKENIZER = types.SimpleNamespace(full_vocab_size=VOCAB, pad_token_id=PAD, mask_token_id=MASK)


def harness_config(family: str, run_dir: Path) -> dict[str, Any]:
    return {"model": {**SHARED_ARGS, **MODELS[family]},
            "predictor": {"_target_": "types.SimpleNamespace", "tokenizer": None, "noise_schedule": None,
                          "model": None, "max_length": MAX_LENGTH},
            "loss": {"_target_": "__main__.StandInLoss", "family": family},
            "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1},
            "lr_scheduler": {"name": "constant", "num_warmup_steps": 0},
            "lightning_module": {"_target_": "xlm.harness.Harness"}, "paths": {"run_dir": str(run_dir)}}


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Noise on every parameter, so that no part starts at zero (xlm-core zero-initialises DDiT's modulations and
    output) and every weight changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def read_back(ckpt: Path, config: dict[str, Any], *, apply_ema: bool) -> Harness:
    return Harness.from_checkpoint(ckpt, cfg=config, tokenizer=TOKENIZER, datamodule=DataModuleStandIn(),
                                   apply_ema=apply_ema).eval()


def make_family(family: str, work: Path) -> dict[str, Any]:
    out = work / family
    torch.manual_seed(0)
    config = harness_config(family, out / "run")
    harness = Harness(config, tokenizer=TOKENIZER, datamodule=DataModuleStandIn())
    perturb_(harness.model, seed=1)
    ema = EMACallback(decay=0.9, use_num_updates=True, apply_ema_at_train_end=False)
    trainer = L.Trainer(max_steps=TRAIN_STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[ema],
                        default_root_dir=str(out / "run"))
    batches = [make_batch(family, seed) for seed in range(10, 10 + TRAIN_STEPS)]
    trainer.fit(harness, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    inputs = make_batch(family, seed=0)
    save_file({k: v for k, v in inputs.items() if "targets" not in k}, out / "inputs.safetensors")
    with torch.no_grad():  # read back as push_to_hub does: the run's config, its tokenizer and datamodule
        raw = network_outputs(family, read_back(ckpt, config, apply_ema=False).model, inputs)
        loaded = read_back(ckpt, config, apply_ema=True)
        with_ema = network_outputs(family, loaded.model, inputs)
        hub = out / "hub"
        loaded.model.save_pretrained(hub)
        network = type(loaded.model).from_pretrained(hub, strict=True).eval()
        from_hub = network_outputs(family, network, inputs)
    save_file(with_ema, out / "ckpt_outputs.safetensors")
    save_file(from_hub, out / "hub_outputs.safetensors")
    return {"inputs": f"{family}/inputs.safetensors",
            "sources": {"ckpt": f"{family}/last.ckpt", "hub": f"{family}/hub"},
            "outputs": {"ckpt": f"{family}/ckpt_outputs.safetensors", "hub": f"{family}/hub_outputs.safetensors"},
            "ema_vs_raw": largest_difference(with_ema, raw)}


def load_export(family: str, directory: Path, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """xlm's export loaded as xlm-core loads a hub model: the class's `from_pretrained`, strictly."""
    cls = hydra.utils.get_class(MODELS[family]["_target_"])
    config = json.loads((directory / "config.json").read_text())
    model = cls.from_pretrained(directory, strict=True).eval()
    with torch.no_grad():
        outputs = network_outputs(family, model, inputs)
    return {"outputs": outputs, "ignored_config_keys": sorted(set(config) - set(cls._hub_mixin_init_parameters))}


def main(argv: list[str]) -> int:
    phase, work = argv[0], Path(argv[1])
    omegaconf_resolvers.register_resolvers()
    if phase == "make":
        families = {family: make_family(family, work) for family in MODELS}
        (work / "manifest.json").write_text(json.dumps({"families": families}, indent=2))
        return 0
    exports = json.loads((work / "exports.json").read_text())
    loaded: dict[str, Any] = {}
    for family, dirs in exports.items():
        inputs = load_file(work / family / "inputs.safetensors")
        for fmt, directory in dirs.items():
            result = load_export(family, work / directory, inputs)
            outputs_path = f"{family}/back_{fmt}_outputs.safetensors"
            save_file(result.pop("outputs"), work / outputs_path)
            loaded.setdefault(family, {})[fmt] = {"outputs": outputs_path, **result}
    (work / "loaded.json").write_text(json.dumps(loaded, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
