"""Reading xlm-core checkpoints (github.com/dhruvdcoder/xlm-core), the "legacy" layout every family converts.

xlm-core trains through Lightning. Its `Harness` (`src/xlm/harness.py`) holds the network as `model`, so a
`.ckpt`'s `state_dict` keys are `model.<the network's keys>`, next to `noise_schedule.*` buffers and, in older
runs, `predictor.model.*` duplicates of every weight; `torch.compile` adds `_orig_mod.`. Its hyper-parameters
are the whole Hydra config (`OmegaConf.to_container(cfg, resolve=True)` under passthrough resolvers, so values
drawn from the tokenizer stay strings such as `"${tokenizer:full_vocab_size}"`; older runs pickle a DictConfig),
with the network's constructor arguments under `model`. The EMA callback (`src/xlm/utils/ema.py`, torch_ema)
saves `checkpoint["ema"] = {decay, num_updates, shadow_params, collected_params}`, `shadow_params` being a
list in the order of `harness.parameters()`: the network's parameters in state-dict order (the noise schedules
have only buffers, and `predictor.model` shares the same parameters).

A hub export (`Model.push_to_hub`, huggingface_hub's PyTorchModelHubMixin) is `model.safetensors` with the
network's own keys (a tensor shared between modules kept once, under its alphabetically first name: of the
rotary buffer all layers share only `encoder.0.rotary_emb.inv_freq` remains) and `config.json` with the
constructor arguments, defaults included.

    config, state = read_xlm_core("last.ckpt")                 # EMA weights when the checkpoint has them
    config, state = read_xlm_core("last.ckpt", use_ema=False)  # the raw weights
    config, state = read_xlm_core("ilm-owt/")                  # model.safetensors + config.json
    xc = xlm_core_config(config, state, where="...", notes=notes)   # sizes, checked against the weights

What is the same in the four families' networks lives here: the reader, the constructor arguments, the
rotary buffer, and the key map of `xlm.modules.rotary_transformer.RotaryTransformerLayer` onto
`xlm.nn.TransformerBlock` (ARLM, MLM and ILM share that layer; MDLM's DDiT has its own map).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xlm.errors import ConversionError
from xlm.io import read_json_object
from xlm.interop.converter import config_dict, Converted
from xlm.interop.keymap import check_mapped, check_state_dict, KeyMap, Rule, Split
from xlm.interop.probe import CheckpointProbe
from xlm.interop.readers import read_checkpoint, read_hf_dir, to_plain
from xlm.nn import attention_bias
from xlm.model_bounds import meta_model

__all__ = ["ACTIVATIONS", "CLASS_MARKS", "ENCODER_DROP", "ENCODER_RULES", "ROPE_BASE", "XLM_CORE_DEFAULTS",
           "XlmCoreConfig", "check_rotary_buffers", "common_export_problems", "constructor_args",
           "convert_from_xlm_core", "convert_to_xlm_core", "insert_rotary_buffer", "pad_token_id", "pop_read_record",
           "read_xlm_core", "recognises_xlm_core", "rotary_inv_freq", "xlm_core_config", "xlm_core_model_state"]

_NOTES = "__xlm_read_notes__"  # what the reader did (EMA, prefixes), passed on to the converter's report
_DROPPED = "__xlm_read_dropped__"

#: Constructor defaults shared by xlm-core's RotaryTransformer{ARLM,MLM,ILM...}Model and MDLMModel: what xlm-core
#: built when its config left an argument out (a hub config.json lists them all; a Hydra config may not).
XLM_CORE_DEFAULTS: dict[str, Any] = {"padding_idx": 0, "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5,
                                     "rotary_emb_dim": 64, "max_length": 1024}
#: xlm-core's FFN activations -> ours ("gelu" is nn.GELU(approximate="tanh") there).
ACTIVATIONS = {"relu": "relu", "gelu": "gelu_tanh"}
ROPE_BASE = 10000.0  # hard-coded in xlm-core's RotaryEmbedding

#: buffers of xlm-core networks (not parameters: no EMA shadow); rotary sin/cos were persistent in old runs
_BUFFER = re.compile(r"(^|.*\.)(rotary_emb\.(inv_freq|sin|cos)|sigma_map\.freqs)$")

# -- the rotary transformer layer shared by ARLM, MLM and ILM ---------------------------------

#: xlm-core `encoder.{i}` (RotaryTransformerLayer) -> our `layers.{i}` (TransformerBlock).
ENCODER_RULES = [
    Rule("encoder.{i}.norm1.{p}", "layers.{i}.attn_norm.{p}"),
    Rule("encoder.{i}.attn_qkv.weight",  # (3d, d), q | k | v along dim 0 (qkv.chunk(3, dim=-1) of the output)
         ("layers.{i}.attn.q_proj.weight", "layers.{i}.attn.k_proj.weight", "layers.{i}.attn.v_proj.weight"),
         Split(dim=0)),
    Rule("encoder.{i}.o_proj.weight", "layers.{i}.attn.out_proj.weight"),
    Rule("encoder.{i}.norm2.{p}", "layers.{i}.ffn_norm.{p}"),
    Rule("encoder.{i}.mlp.0.{p}", "layers.{i}.ffn.up_proj.{p}"),
    Rule("encoder.{i}.mlp.2.{p}", "layers.{i}.ffn.down_proj.{p}"),
]
ENCODER_DROP = ["encoder.{i}.rotary_emb.{b:inv_freq|sin|cos}"]


def rotary_inv_freq(rotary_dim: int, base: float = ROPE_BASE) -> Tensor:
    """xlm-core's `RotaryEmbedding.inv_freq`: 1 / base^(2k / rotary_dim), fp32."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))


def check_rotary_buffers(state: Mapping[str, Tensor], rotary_dim: int, *, source: str | None) -> None:
    """Every stored `rotary_emb.inv_freq` must be the table of `rotary_dim` dims with base 10000."""
    expected = rotary_inv_freq(rotary_dim)
    bad = [k for k, v in state.items() if k.endswith("rotary_emb.inv_freq")
           and (v.shape != expected.shape or not torch.allclose(v.float(), expected, rtol=1e-4))]
    if bad:
        raise ConversionError(f"{bad[0]} does not match rotary embeddings over rotary_emb_dim={rotary_dim} with base "
                              f"{ROPE_BASE:g}; the config's rotary_emb_dim (or nhead) is not the checkpoint's",
                              source=source)


def insert_rotary_buffer(state: dict[str, Tensor], rotary_dim: int) -> dict[str, Tensor]:
    """`encoder.0.rotary_emb.inv_freq` after layer 0's weights, as xlm-core's own safetensors export keeps it
    (its strict `load_model` then matches every layer's shared buffer to that one)."""
    out: dict[str, Tensor] = {}
    done = False
    for key, tensor in state.items():
        if not done and not key.startswith("encoder.0.") and any(k.startswith("encoder.0.") for k in out):
            out["encoder.0.rotary_emb.inv_freq"] = rotary_inv_freq(rotary_dim)
            done = True
        out[key] = tensor
    if not done:
        out["encoder.0.rotary_emb.inv_freq"] = rotary_inv_freq(rotary_dim)
    return out


# -- the constructor arguments ---------------------------------------------------------------

@dataclass(frozen=True)
class XlmCoreConfig:
    """An xlm-core network's constructor arguments, resolved: from its config where they are numbers there, read
    off the weights where the config holds an unresolved interpolation, xlm-core's own default where it has none."""

    target: str | None  # the class (`_target_`), when the config names it
    num_embeddings: int
    d_model: int
    num_layers: int
    nhead: int
    dim_feedforward: int
    dropout: float
    activation: str  # xlm-core's name: "relu" | "gelu" (tanh approximation)
    layer_norm_eps: float
    rotary_emb_dim: int
    max_length: int
    final_layer_norm: bool  # not final_layer_without_normalization
    padding_idx: int | None
    d_cond: int | None = None  # MDLM only

    @property
    def head_dim(self) -> int:
        return self.d_model // self.nhead

    @property
    def activation_ours(self) -> str:
        return ACTIVATIONS[self.activation]

    @property
    def rotary_dim_ours(self) -> int | None:
        """`rotary_emb_dim` as our configs' `rotary_dim`: None where it covers the whole head."""
        return None if self.rotary_emb_dim == self.head_dim else self.rotary_emb_dim


def _model_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The constructor arguments: a config.json is them; a Hydra config has them under `model`."""
    for outer in (config, config.get("cfg"), config.get("config")):
        if isinstance(outer, Mapping) and isinstance(outer.get("model"), Mapping) and "d_model" in outer["model"]:
            return outer["model"]
    return config


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # PyYAML reads "1e-5" as a string
        except ValueError:
            return None
    return None


def xlm_core_config(source_config: Any, state: Mapping[str, Tensor], *, where: str, notes: list[str],
                    classes: Sequence[str], final_layer_default: bool | None = None,
                    embedding: str = "embed_tokens.weight") -> XlmCoreConfig:
    """The resolved constructor arguments of the network whose config and (xlm-core keyed) weights these are.
    `classes` are the xlm-core class names this family reads; a config naming another class is refused."""
    c = dict(_model_section(config_dict(source_config)))
    target = c.get("_target_")
    if isinstance(target, str) and classes and target.rsplit(".", 1)[-1] not in classes:
        raise ConversionError(f"the config's model is {target}, which this converter does not read (it reads "
                              f"xlm-core's {', '.join(classes)})", source=where)
    table = state.get(embedding)

    def size(name: str, from_weights: int | None, what: str) -> int:
        value = c.get(name)
        if _as_int(value) is not None:
            return value
        if from_weights is not None:
            if name in c:
                notes.append(f"{name} read off {what} ({from_weights}); the config holds {value!r}")
            return from_weights
        raise ConversionError(f"the config has no usable {name!r} ({value!r}) and the checkpoint has no {what} to "
                              f"read it from", source=where)

    def setting(name: str) -> Any:
        if name in c and c[name] is not None:
            return c[name]
        notes.append(f"{name} not in the config: xlm-core's default {XLM_CORE_DEFAULTS[name]!r}")
        return XLM_CORE_DEFAULTS[name]

    num_embeddings = size("num_embeddings", None if table is None else int(table.shape[0]), embedding)
    d_model = size("d_model", None if table is None else int(table.shape[1]), embedding)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.(\d+)\.", k))}
    num_layers = size("num_layers", max(layers) + 1 if layers else None, "encoder.{i} layers")
    nhead = _as_int(c.get("nhead"))
    if nhead is None:
        raise ConversionError(f"the config has no usable 'nhead' ({c.get('nhead')!r}): the number of heads cannot be "
                              f"read off the weights", source=where)
    if nhead < 1 or d_model % nhead:
        raise ConversionError(f"nhead={nhead} does not divide d_model={d_model}", source=where)
    mlp = state.get("encoder.0.mlp.0.weight")
    if c.get("dim_feedforward") is None:  # xlm-core: `dim_feedforward or 4 * d_model`
        dim_feedforward = 4 * d_model
    else:
        dim_feedforward = size("dim_feedforward", None if mlp is None else int(mlp.shape[0]), "encoder.0.mlp.0.weight")
    inv_freq = next((v for k, v in state.items() if k.endswith("rotary_emb.inv_freq")), None)
    if _as_int(c.get("rotary_emb_dim")) is None and inv_freq is not None:
        rotary = 2 * int(inv_freq.shape[0])
        held = f"holds {c['rotary_emb_dim']!r}" if "rotary_emb_dim" in c else "has none"
        notes.append(f"rotary_emb_dim read off rotary_emb.inv_freq ({rotary}); the config {held}")
    else:
        rotary = _as_int(setting("rotary_emb_dim"))
        if rotary is None:
            raise ConversionError(f"the config's rotary_emb_dim {c.get('rotary_emb_dim')!r} is not a number",
                                  source=where)
    if rotary < 2 or rotary % 2 or rotary > d_model // nhead:
        raise ConversionError(f"rotary_emb_dim={rotary} must be even and at most the head dim "
                              f"d_model/nhead={d_model // nhead}", source=where)
    activation = setting("activation")
    if activation not in ACTIVATIONS:
        raise ConversionError(f"activation {activation!r}: xlm-core's layers know {sorted(ACTIVATIONS)}", source=where)
    eps = _as_float(setting("layer_norm_eps"))
    dropout = _as_float(setting("dropout"))
    if eps is None or dropout is None:
        raise ConversionError(f"layer_norm_eps {c.get('layer_norm_eps')!r} / dropout {c.get('dropout')!r} are not "
                              f"numbers", source=where)
    max_length = _as_int(setting("max_length"))
    if max_length is None:
        raise ConversionError(f"the config's max_length {c.get('max_length')!r} is not a number (an interpolation "
                              f"that was not resolved?); set it in the config", source=where)
    flag = c.get("final_layer_without_normalization")
    if isinstance(flag, bool):
        final_norm = not flag
    elif any(k.startswith("output_layer.norm_final.") for k in state):
        final_norm = True
    elif state or final_layer_default is None:
        final_norm = False
    else:
        final_norm = not final_layer_default
    padding_idx = _as_int(c.get("padding_idx"))
    d_cond = None
    if "d_cond" in c or "sigma_map.mlp.0.weight" in state:  # MDLM: `d_cond or d_model // 2`
        sigma = state.get("sigma_map.mlp.0.weight")
        d_cond = (d_model // 2 if c.get("d_cond") is None
                  else size("d_cond", None if sigma is None else int(sigma.shape[0]), "sigma_map.mlp.0.weight"))
    return XlmCoreConfig(target=target if isinstance(target, str) else None, num_embeddings=num_embeddings,
                         d_model=d_model, num_layers=num_layers, nhead=nhead, dim_feedforward=dim_feedforward,
                         dropout=dropout, activation=activation, layer_norm_eps=eps, rotary_emb_dim=rotary,
                         max_length=max_length, final_layer_norm=final_norm, padding_idx=padding_idx, d_cond=d_cond)


# -- reading files ---------------------------------------------------------------------------

def xlm_core_model_state(state: Mapping[str, Tensor], notes: list[str]) -> tuple[dict[str, Tensor], list[str]]:
    """The network's own keys (order kept): `_orig_mod.` removed, and for a Lightning state dict only the
    `model.*` keys, prefix stripped; the rest (`predictor.model.*`, `noise_schedule.*`, ...) is returned as dropped."""
    state = dict(state)
    if any("_orig_mod." in k for k in state):
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
        notes.append("removed torch.compile's '_orig_mod.' from keys")
    if not any(k.startswith("model.") for k in state):
        return state, []
    dropped = [k for k in state if not k.startswith("model.")]
    if dropped:
        groups = sorted({k.split(".", 2)[0] + (".model" if k.startswith("predictor.model.") else "") for k in dropped})
        notes.append(f"kept the Lightning module's model.* weights; left out {len(dropped)} other key(s) "
                     f"({', '.join(g + '.*' for g in groups)})")
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, dropped


def _hyper_model_config(hyper: Any) -> Mapping[str, Any] | None:
    hyper = to_plain(hyper, resolve=True)
    if not isinstance(hyper, Mapping):
        return None
    section = _model_section(hyper)
    return section if "d_model" in section else None


def _sibling_config(path: Path, what: str) -> dict[str, Any]:
    sibling = path.parent / "config.json"
    if not sibling.is_file():
        raise ConversionError(f"{what}, and there is no config.json beside it to give the model's sizes (xlm-core's "
                              f"hub export puts one next to model.safetensors)", source=path)
    return read_json_object(sibling, ConversionError)


def _apply_ema(ckpt: Mapping[str, Any], state: dict[str, Tensor], notes: list[str], path: Path,
               use_ema: bool | None) -> dict[str, Tensor]:
    ema = ckpt.get("ema")
    if ema is None:
        if use_ema:
            raise ConversionError("use_ema=True but the checkpoint has no 'ema' entry (the run had no EMA callback); "
                                  "pass use_ema=False for its weights", source=path)
        notes.append("no EMA in the checkpoint: its weights as saved")
        return state
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, Tensor) for t in shadow):
        raise ConversionError("the checkpoint's 'ema' has no shadow_params list of tensors (torch_ema's layout); "
                              "pass use_ema=False for the raw weights", source=path)
    order = [k for k in state if not _BUFFER.match(k)]  # the network's parameters, in its state-dict order
    if len(shadow) < len(order):
        raise ConversionError(f"ema.shadow_params has {len(shadow)} tensors but the model has {len(order)} "
                              f"parameters", source=path)
    bad: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for offset in dict.fromkeys((0, len(shadow) - len(order))):  # other modules' parameters come after (or before)
        chunk = shadow[offset: offset + len(order)]
        bad = [(k, tuple(t.shape), tuple(state[k].shape)) for k, t in zip(order, chunk)
               if tuple(t.shape) != tuple(state[k].shape)]
        if not bad:
            break
    if bad:
        raise ConversionError("ema.shadow_params is not in the order of the model's parameters", wrong_shapes=bad,
                              source=path, target="the raw weights")
    state = dict(state)
    state.update(zip(order, chunk))
    extra = len(shadow) - len(order)
    notes.append(f"EMA weights (ema.shadow_params, decay {ema.get('decay')}, {ema.get('num_updates')} updates)"
                 + (f"; {extra} shadow tensor(s) of other modules ignored" if extra else ""))
    return state


def read_xlm_core(path: str | Path, *, use_ema: bool | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(constructor arguments, the network's state dict with xlm-core's keys) from

    - a hub export dir (config.json + model.safetensors or pytorch_model.bin), or its weights file;
    - a Lightning `.ckpt` (config from its hyper_parameters, else a config.json beside it); `use_ema`: None (the
      default) takes the EMA weights when the checkpoint has them, True requires them, False takes the raw ones;
    - a model-only state dict (xlm-core's extract_model_state_dict) with a config.json beside it.
    """
    path = Path(path)
    notes: list[str] = []
    if path.is_dir():
        if use_ema:
            raise ConversionError("use_ema=True but this is an export dir, which holds one set of weights (xlm-core "
                                  "exports with EMA applied); EMA applies to a Lightning .ckpt", source=path)
        config, raw = read_hf_dir(path)
        state, dropped = xlm_core_model_state(raw, notes)
    else:
        content = read_checkpoint(path)
        if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):  # Lightning
            state, dropped = xlm_core_model_state(content["state_dict"], notes)
            hyper = _hyper_model_config(content.get("hyper_parameters"))
            config = dict(hyper) if hyper is not None else _sibling_config(
                path, "the Lightning checkpoint has no hyper_parameters with the model's constructor arguments")
            if use_ema is not False:
                state = _apply_ema(content, state, notes, path, use_ema)
        elif isinstance(content, Mapping) and content and all(isinstance(v, Tensor) for v in content.values()):
            if use_ema:
                raise ConversionError("use_ema=True but this is a bare weights file, not a Lightning checkpoint with "
                                      "an 'ema' entry", source=path)
            state, dropped = xlm_core_model_state(content, notes)
            config = _sibling_config(path, "a weights file carries no config")
        else:
            raise ConversionError("neither a Lightning checkpoint (with 'state_dict') nor a state dict of tensors",
                                  source=path)
    return {**config, _NOTES: notes, _DROPPED: dropped}, state


def pop_read_record(config: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """(config without the reader's record, the reader's notes, the keys it left out)."""
    c = dict(config_dict(config))
    return c, list(c.pop(_NOTES, [])), list(c.pop(_DROPPED, []))


# -- recognising a checkpoint, for format detection ------------------------------------------

#: Tensor-name prefixes that only one of xlm-core's network classes has. The others (RotaryTransformerARLMModel,
#: RotaryTransformerMLMModel) have the same names and are told apart only by a config's `_target_`.
CLASS_MARKS = {"sigma_map.": "MDLMModel", "length_output_layer.": "RotaryTransformerILMModelWithStoppingClassification"}


def _network_names(names: frozenset[str]) -> set[str]:
    """The network's own tensor names, as `xlm_core_model_state` keeps them."""
    stripped = {k.replace("_orig_mod.", "") for k in names}
    if any(k.startswith("model.") for k in stripped):
        return {k[len("model."):] for k in stripped if k.startswith("model.")}
    return stripped


def _target_class(probe: CheckpointProbe) -> str | None:
    """The class a Lightning checkpoint's hyper-parameters (or a dir's config.json) name as the model's `_target_`."""
    for config in (probe.hyper_parameters, probe.config):
        section = _model_section(config) if isinstance(config, Mapping) else {}
        target = section.get("_target_") if "d_model" in section else None
        if isinstance(target, str):
            return target.rsplit(".", 1)[-1]
    return None


def _hub_export_class(probe: CheckpointProbe) -> str | None:
    """ARLM or MLM, told apart by the constructor arguments a hub export's config.json lists in full (the hub
    mixin writes defaults too): only the MLM takes `mask_idx`; both take `force_flash_attn`."""
    config = probe.config
    if not isinstance(config, Mapping) or "force_flash_attn" not in config:
        return None
    return "RotaryTransformerMLMModel" if "mask_idx" in config else "RotaryTransformerARLMModel"


def recognises_xlm_core(classes: Sequence[str]) -> Callable[[CheckpointProbe], bool]:
    """A `Converter.recognises` for xlm-core checkpoints of `classes`: xlm-core's tensor names (a Lightning
    `.ckpt`, a hub export dir, a weights file), and then the class its config names as `_target_` or, when
    it names none, the prefixes only one class has (`CLASS_MARKS`), or a hub export's constructor arguments."""
    wanted = set(classes)

    def recognises(probe: CheckpointProbe) -> bool:
        names = _network_names(probe.keys)
        if "embed_tokens.weight" not in names or "encoder.0.attn_qkv.weight" not in names:
            return False
        target = _target_class(probe)
        if target is not None:
            return target in wanted
        marked = {cls for prefix, cls in CLASS_MARKS.items() if any(k.startswith(prefix) for k in names)}
        if marked:
            return bool(marked & wanted)
        exported = _hub_export_class(probe)
        return exported in wanted if exported is not None else not wanted & set(CLASS_MARKS.values())

    return recognises


# -- both directions, for the families built on RotaryTransformerLayer (ARLM, MLM, ILM) ---------

def pad_token_id(xc: XlmCoreConfig, notes: list[str]) -> int:
    """xlm-core's padding_idx, our pad_token_id and padding_idx both (the [PAD] id, and the embedding row its
    nn.Embedding keeps from training); 0, xlm-core's default, with a note when the config gives no usable one."""
    if xc.padding_idx is not None and 0 <= xc.padding_idx < xc.num_embeddings:
        return xc.padding_idx
    notes.append("padding_idx not given as a number in the config; pad_token_id and padding_idx set to 0")
    return 0


def convert_from_xlm_core(state: Mapping[str, Tensor], source_config: Any, *, source: str | None, key_map: KeyMap,
                          classes: Sequence[str], final_layer_default: bool,
                          build: Callable[[XlmCoreConfig, list[str]], Any],
                          factory: Callable[..., nn.Module]) -> Converted:
    """xlm-core network (its keys, its constructor arguments) -> Converted(our config, our state dict).
    `build` makes our config (raising for what ours cannot hold), with attention as xlm-core's: no biases."""
    config_in, notes, dropped = pop_read_record(source_config)
    xc = xlm_core_config(config_in, state, where=source or "the xlm-core config", notes=notes, classes=classes,
                         final_layer_default=final_layer_default)
    config = build(xc, notes)
    check_rotary_buffers(state, xc.rotary_emb_dim, source=source)
    result = key_map.apply(state, source=source)
    check_mapped(result, meta_model(factory, config, tensors=len(state), where=source), source=source)
    return Converted(config, result.state, dropped=dropped + result.dropped, notes=notes, source=source)


def common_export_problems(config: Any) -> list[str]:
    """Why xlm-core's RotaryTransformerLayer cannot hold this config's blocks ([] = it can): LayerNorm with
    biases, bias-free attention, a ReLU or GELU-tanh MLP with biases, rotary with base 10000."""
    problems = []
    if attention_bias(config.bias, config.attn_bias):
        problems.append(f"attention biases (bias={config.bias} with attn_bias={config.attn_bias}; xlm-core's "
                        f"attention has none: attn_bias=False)")
    if config.norm != "layernorm":
        problems.append(f"norm={config.norm!r} (xlm-core uses layernorm)")
    if config.activation not in ("relu", "gelu_tanh"):
        problems.append(f"activation={config.activation!r} (xlm-core has relu and gelu_tanh)")
    if not config.bias:
        problems.append("bias=False (xlm-core's MLP and LayerNorms have biases)")
    if config.rope_base != ROPE_BASE:
        problems.append(f"rope_base={config.rope_base:g} (xlm-core fixes {ROPE_BASE:g})")
    if config.padding_idx not in (None, config.pad_token_id):
        problems.append(f"padding_idx={config.padding_idx} with pad_token_id={config.pad_token_id} (xlm-core's "
                        f"padding_idx is both)")
    return problems


def constructor_args(config: Any, *, rotary_dim: int, **extra: Any) -> dict[str, Any]:
    """The xlm-core config.json (constructor arguments) of a model built from our `config`."""
    return {"num_embeddings": config.vocab_size, "d_model": config.model_dim, "num_layers": config.num_layers,
            "nhead": config.num_heads, "padding_idx": config.pad_token_id, "dim_feedforward": config.hidden_ffn_dim,
            "dropout": config.dropout, "activation": {"relu": "relu", "gelu_tanh": "gelu"}[config.activation],
            "layer_norm_eps": config.norm_eps, "rotary_emb_dim": rotary_dim, "max_length": config.max_seq_len,
            "force_flash_attn": False, **extra}


def convert_to_xlm_core(state: Mapping[str, Tensor], config: Any, *, key_map: KeyMap, problems: list[str],
                        export_config: Callable[[], dict[str, Any]], factory: Callable[..., nn.Module],
                        rotary_dim: int, what: str) -> Converted:
    """Our state dict -> Converted(xlm-core config.json dict, xlm-core keyed state dict, as its hub export)."""
    if problems:
        raise ConversionError(f"this {what} config has no xlm-core equivalent: {'; '.join(problems)}")
    state = dict(state)
    check_state_dict(state, factory(config, device="meta"), target=f"the {what} config")
    result = key_map.inverse().apply(state)
    if result.unmatched or result.incomplete:
        raise ConversionError("keys with no place in the xlm-core layout",
                              unexpected=result.unmatched + result.incomplete)
    out: dict[str, Tensor] = {}
    storages: set[int] = set()
    for key, tensor in result.state.items():  # a tied head becomes its own copy: xlm-core's linear is separate
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.detach().clone().contiguous() if ptr in storages and tensor.numel() else tensor.contiguous()
        storages.add(ptr)
    return Converted(export_config(), insert_rotary_buffer(out, rotary_dim))
