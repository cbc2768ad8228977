"""xlm-core's half of scripts/cross_check_xlm_core.py, run in a venv that holds xlm-core and xlm-models (their
package is also named `xlm`, so this program imports nothing of ours and runs in its own process, `python -I`).

    python -I scripts/xlm_core_side.py make WORK   # each family: train, checkpoint, export, record outputs and losses
    python -I scripts/xlm_core_side.py load WORK   # load the dirs WORK/exports.json names, record outputs

`make` builds each family's network with xlm-core's own class inside xlm-core's own `Harness` (the Lightning
module every xlm-core run trains), trains it a few steps under Lightning with xlm-core's `EMACallback`, and writes
`last.ckpt` with `Trainer.save_checkpoint` (Lightning's checkpoint with the callback's `ema` entry, as
ModelCheckpoint writes it mid-run). The Harness's datamodule, tokenizer, predictor and loss are stand-ins: they
hold no weights, and the checkpoint layout, not the objective, is under test. The checkpoint is read back with
`Harness.from_checkpoint(apply_ema=True)`, the path of xlm-core's push_to_hub command, whose network is then
exported with `save_pretrained` (what `push_to_hub` uploads) and reloaded with `from_pretrained(strict=True)`.
Every model runs on fixed inputs, called the way its family's loss calls it; WORK/manifest.json lists the files.

For ARLM, MLM and ILM, `make` also records xlm-core's own objective on the hub export: batches built by the family's
own collators (configured as their YAMLs configure them) from fixed examples with fixed seeds, the loss class
computing the loss on them, and its gradient with respect to every parameter. ILM's drops are recorded, so that xlm
can build the same batch with its own collator. The networks run in eval mode: dropout's draws could not be matched.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import hydra
import lightning as L
from arlm.datamodule_arlm import ARLMSeq2SeqCollator, DefaultARLMCollator
from arlm.loss_arlm import ARLMLoss
from ilm.datamodule_ilm import DefaultILMCollator, ILMSeq2SeqCollator
from ilm.loss_ilm import ILMLossWithMaskedCE
from mlm.datamodule_mlm import DefaultMLMCollator, MLMSeq2SeqTrainCollator
from mlm.loss_mlm import MLMLoss
from xlm.datamodule import SimpleSpaceTokenizer
from xlm.harness import Harness
from xlm.utils import omegaconf_resolvers
from xlm.utils.ema import EMACallback

VOCAB, DIM, LAYERS, HEADS, MAX_LENGTH, SEQ, BATCH = 37, 32, 2, 4, 16, 12, 3
TRAIN_STEPS = 4
#: xlm-core's tokenizer for number words: [PAD] 0, [CLS] 1, [MASK] 2, [EOS] 3, [BOS] 4, [SEP] 5, [UNK] 6, "0".."29"
TOKENIZER = SimpleSpaceTokenizer.for_numbers(vocab_size=VOCAB - 7)
PAD, MASK = TOKENIZER.pad_token_id, TOKENIZER.mask_token_id

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
    losses = record_losses(family, network, work) if family in LOSS_CASES else []
    return {"inputs": f"{family}/inputs.safetensors",
            "sources": {"ckpt": f"{family}/last.ckpt", "hub": f"{family}/hub"},
            "outputs": {"ckpt": f"{family}/ckpt_outputs.safetensors", "hub": f"{family}/hub_outputs.safetensors"},
            "ema_vs_raw": largest_difference(with_ema, raw), "losses": losses}


# -- xlm-core's objectives on batches its own collators build -----------------------------------------------------

#: (prompt, target) texts of the seq2seq batches, one without a prompt; texts of the LM batches
SEQ2SEQ_TEXTS = [("0 1 2", "3 4 4 5 6"), ("", "7 8 9"), ("10 11", "12 13 14 15"), ("16", "17 18")]
LM_TEXTS = ["19 20 21 22 23 24", "25 26 27", "28 29 0 1 2", "3 4 5"]
#: numpy's and torch's seed for the collators: with it ILM's seq2seq batch has a row with nothing dropped (the stop
#: target), a row with everything dropped, and two equal tokens dropped into one gap (a target counted twice)
LOSS_SEED = 121
#: the settings of xlm-core's ILM runs that differ from the loss's defaults (owt_ilm.yaml weighs the stop loss
#: 0.001: a larger weight, within the range the loss allows, lets the stop head's gradients show)
ILM_LOSS = {"length_loss": "binary_ce", "length_loss_weight": 0.5, "stopping_class_weight": 0.9}
#: family -> (batch kind, the loss class's arguments, one row per batch) recorded; MLM's num-masked factor is taken
#: one row per batch, the only batches its broadcast weighs right (the cross-check's note says more)
LOSS_CASES: dict[str, list[tuple[str, dict[str, Any], bool]]] = {
    "arlm": [("lm", {}, False), ("seq2seq", {}, False)],
    "mlm": [("lm", {}, False), ("seq2seq", {}, False), ("seq2seq", {"use_num_masked_factor": True}, True)],
    "ilm": [("lm", ILM_LOSS, False), ("seq2seq", ILM_LOSS, False)],
}
LOSS_CLASSES = {"arlm": ARLMLoss, "mlm": MLMLoss, "ilm": ILMLossWithMaskedCE}


def encode(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def examples(kind: str) -> list[dict[str, list[int]]]:
    """The collators' inputs: seq2seq rows carry the target in `input_ids` (MLM's collator reads it there too)."""
    if kind == "seq2seq":
        return [{"prompt_ids": encode(prompt), "input_ids": encode(target)} for prompt, target in SEQ2SEQ_TEXTS]
    return [{"input_ids": encode(text)} for text in LM_TEXTS]


def recording_drops(collator_class: type) -> tuple[type, list[list[int]]]:
    """The ILM collator class with its drop_indices_fn recording each row's drops (indices into the row's
    droppable tokens), in row order, into the list returned with it."""
    drops: list[list[int]] = []

    def drop_indices(seq_len: int, n_drops: int) -> Any:
        chosen = collator_class.drop_indices_fn(seq_len, n_drops)
        drops.append(sorted(int(i) for i in chosen))
        return chosen

    return type(f"Recording{collator_class.__name__}", (collator_class,), {"drop_indices_fn": drop_indices}), drops


def collator(family: str, kind: str) -> tuple[Callable[[list[Any]], dict[str, Any]], list[list[int]] | None]:
    """The family's collator for `kind` as its collator YAML (xlm-models' <family>/configs/collator/) configures it,
    with the sizes of these examples; the list ILM's drops are recorded into."""
    if family == "arlm":
        if kind == "lm":  # its labels are not padded: it collates rows that fill the block (packed text) only
            return DefaultARLMCollator(TOKENIZER, block_size=4, noise_schedule=None), None
        return ARLMSeq2SeqCollator(TOKENIZER, None, block_size=6, input_block_size=4, add_bos="output",
                                   add_eos=True), None
    if family == "mlm":
        if kind == "lm":
            return DefaultMLMCollator(TOKENIZER, block_size=8, noise_schedule=None, loss_on_padding=True,
                                      add_bos=False, add_eos=True), None
        return MLMSeq2SeqTrainCollator(TOKENIZER, None, block_size=6, input_block_size=4, add_bos=False, add_eos=True,
                                       loss_on_padding=True), None
    if kind == "lm":
        cls, drops = recording_drops(DefaultILMCollator)
        return cls(TOKENIZER, block_size=8, noise_schedule=None), drops
    cls, drops = recording_drops(ILMSeq2SeqCollator)
    return cls(TOKENIZER, None, block_size=6, input_block_size=5), drops


def plain(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The batch's tensors, sparse ones dense (ILM's target_ids); the None entries left out."""
    return {k: v.to_dense() if v.is_sparse else v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def without_labels_at_padding(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """ARLM's batch with the labels at padding columns ignored (-100), and how many there were: ARLMSeq2SeqCollator
    sets a label to -100 when the next column is padding, so the last left pad of a padded prompt keeps one."""
    at_padding = batch["target_ids"].ne(-100) & ~batch["attention_mask"]
    return {**batch, "target_ids": batch["target_ids"].masked_fill(at_padding, -100)}, int(at_padding.sum())


def loss_and_gradients(loss_fn: Any, network: torch.nn.Module, batch: dict[str, torch.Tensor], work: Path,
                       name: str) -> dict[str, Any]:
    """xlm-core's loss on the batch and its gradient with respect to every parameter (zero where none flows), saved
    as WORK/NAME_gradients.safetensors with the batch as it was given (WORK/NAME_batch.safetensors: the losses
    overwrite parts of theirs)."""
    network.zero_grad(set_to_none=True)
    loss = loss_fn({k: v.clone() for k, v in batch.items()})["loss"]
    loss.backward()
    gradients = {key: torch.zeros_like(p) if p.grad is None else p.grad for key, p in network.named_parameters()}
    files = {"batch": f"{name}_batch.safetensors", "gradients": f"{name}_gradients.safetensors"}
    save_file(batch, work / files["batch"])
    save_file(gradients, work / files["gradients"])
    return {**files, "loss": loss.item()}


def on_whole_batch(loss_fn: Any, batch: dict[str, torch.Tensor]) -> str:
    """What the loss does with the whole batch of a case compared one row per batch: its error or its loss."""
    rows, columns = batch["input_ids"].shape
    try:
        return f"a {rows} x {columns} batch: loss {loss_fn({k: v.clone() for k, v in batch.items()})['loss'].item()}"
    except RuntimeError as err:
        return f"a {rows} x {columns} batch: {type(err).__name__}: {err}"


def record_losses(family: str, network: torch.nn.Module, work: Path) -> list[dict[str, Any]]:
    """Each case of LOSS_CASES on the network: the collated batch, xlm-core's loss and gradients on it (on each of
    its rows alone where the case says so), the examples and ILM's drops. ARLM's seq2seq case is recorded without
    the labels at padding, and as collated for the note that says what they change."""
    network.eval()
    cases = []
    for number, (kind, arguments, one_row) in enumerate(LOSS_CASES[family]):
        np.random.seed(LOSS_SEED)  # ILM's drops
        torch.manual_seed(LOSS_SEED)  # MLM's masks
        collate, drops = collator(family, kind)
        rows = examples(kind)
        batch = plain(collate(rows))
        loss_fn = LOSS_CLASSES[family](model=network, tokenizer=TOKENIZER, **arguments)
        loss_fn.configure(types.SimpleNamespace(device=torch.device("cpu")))
        case: dict[str, Any] = {"batch": kind, "loss_class": LOSS_CLASSES[family].__name__, "arguments": arguments,
                                "one_row_per_batch": one_row, "examples": rows, "drops": drops}
        name = f"{family}/loss{number}_{kind}"
        if family == "arlm" and kind == "seq2seq":
            case["as_collated"] = loss_and_gradients(loss_fn, network, batch, work, f"{name}_as_collated")
            batch, case["labels_at_padding"] = without_labels_at_padding(batch)
        if one_row:
            case["whole_batch"] = on_whole_batch(loss_fn, batch)
        parts = [{k: v[b:b + 1] for k, v in batch.items()} for b in range(len(rows))] if one_row else [batch]
        case["parts"] = [loss_and_gradients(loss_fn, network, part, work, f"{name}_{i}")
                         for i, part in enumerate(parts)]
        cases.append(case)
    return cases


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
        special = {name: getattr(TOKENIZER, f"{name}_token_id") for name in ("pad", "cls", "mask", "eos", "bos")}
        (work / "manifest.json").write_text(json.dumps({"families": families, "token_ids": special}, indent=2))
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
