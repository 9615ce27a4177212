"""The VQGAN tokenizer's weights in PyTorch key names, and the tokenizer directory (`vqgan.safetensors` + config.json)
that runs, `unimodal-tokenize` and the converters read. Reading transformers' Chameleon directories is convert/hf_vq.py's.

Encoder, quantizer and quant convs use the names transformers uses; the decoder uses taming's (`decoder.up.<i>...`).
Only numpy here (torch is needed just to read a `.pt`/`.bin`/`.ckpt` file); conversion is exact (transposes).
"""
import glob
import json
import os
import re

import numpy as np
from etils import epath
from flax import traverse_util

from unimodal_jax import extras
from unimodal_jax.vq import vqgan

WEIGHTS_FILE = "vqgan.safetensors"
CONFIG_FILE = "config.json"
# taming/Chameleon training checkpoints (`vqgan.ckpt`) also hold the loss modules (PatchGAN, LPIPS): not ours
IGNORED_PREFIXES = ("loss.",)


def torch_key(path: tuple[str, ...]) -> str:
  """Flax param path -> PyTorch state-dict key, e.g. ('encoder', 'down_0', 'block_1', 'conv1', 'kernel') ->
  'encoder.down.0.block.1.conv1.weight'."""
  if path == ("codebook",):
    return "quantize.embedding.weight"
  parts, level = [], False
  for p in path[:-1]:
    m = re.fullmatch(r"(down|up)_(\d+)", p)
    n = re.fullmatch(r"(block|attn)_(\d+)", p)
    if m:
      parts += [m.group(1), m.group(2)]
    elif n and level:  # inside a level: a ModuleList; in `mid`, block_1/attn_1 are attribute names
      parts += [n.group(1), n.group(2)]
    else:
      parts.append(p)
    level = bool(m)
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
  return ".".join(parts + [leaf])


def _to_torch(path, value: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(value.transpose(3, 2, 0, 1)) if path[-1] == "kernel" else value  # HWIO -> OIHW


def _from_torch(path, value: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if path[-1] == "kernel" else value  # OIHW -> HWIO


def export_state_dict(params) -> dict[str, np.ndarray]:
  """Our params -> {torch key: float32 array} (encoder + quantizer + decoder), in the Chameleon/taming layout."""
  flat = traverse_util.flatten_dict(params)
  return {torch_key(p): _to_torch(p, np.asarray(v, np.float32)) for p, v in sorted(flat.items())}


def import_state_dict(state: dict, template, *, allow_missing: tuple[str, ...] = ()):
  """{torch key: array} -> params shaped like `template` (a params tree or its shapes).

  Training-loss modules (`loss.*`, in taming/Chameleon `.ckpt` files) are ignored; keys starting with a prefix in
  `allow_missing` keep the template's value (e.g. the decoder, absent from transformers' checkpoints).
  Unknown keys, missing keys and shape mismatches raise, naming the tensor.
  """
  state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
  flat = traverse_util.flatten_dict(template)
  by_key = {torch_key(p): p for p in flat}
  unknown = sorted(set(state) - set(by_key))
  if unknown:
    raise KeyError(f"tensors that are not VQGAN parameters of this config: {unknown[:8]}"
                   f"{' ...' if len(unknown) > 8 else ''}")
  out = {}
  for key, path in by_key.items():
    if key not in state:
      if not key.startswith(allow_missing):
        raise KeyError(f"tensor {key!r} (param {'/'.join(path)}) is missing from the checkpoint")
      out[path] = flat[path]
      continue
    value = _from_torch(path, np.asarray(state[key], np.float32))
    if value.shape != tuple(flat[path].shape):
      raise ValueError(f"tensor {key!r}: shape {tuple(np.asarray(state[key]).shape)} does not fit param "
                       f"{'/'.join(path)} of shape {tuple(flat[path].shape)} (check config.vqgan)")
    out[path] = value
  return traverse_util.unflatten_dict(out)


def load_state_dict(path: str, prefixes: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """A safetensors file, a directory of them (as transformers saves), or a torch `.pt/.bin/.ckpt` state dict; with
  `prefixes`, only the safetensors tensors under one of them (e.g. a whole Chameleon's tokenizer, never its LM)."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {path}")
    return _load_safetensors(*files, prefixes=prefixes)
  if path.endswith(".safetensors"):
    return _load_safetensors(path, prefixes=prefixes)
  torch = extras.require("torch", f"reading the PyTorch checkpoint {path}")
  state = torch.load(path, map_location="cpu", weights_only=True)
  state = state.get("state_dict", state)  # taming/Chameleon `.ckpt` files nest it
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def _load_safetensors(*paths: str, prefixes: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """The files' tensors; with `prefixes`, only those whose names start with one (the prefix removed)."""
  from safetensors import safe_open
  state = {}
  for path in paths:
    with safe_open(path, framework="np") as f:
      for key in f.keys():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None or not prefixes:
          state[key[len(prefix or ""):]] = f.get_tensor(key)
  return state


def config_from_hf(hf: dict, **overrides):
  """A `ChameleonVQVAEConfig` (as dict, e.g. its config.json or `vq_config`) -> config.vqgan."""
  if hf.get("double_latent"):
    raise ValueError("ChameleonVQVAEConfig.double_latent=True is not supported (Chameleon uses False)")
  if hf.get("attn_type", "vanilla") != "vanilla":
    raise ValueError(f"ChameleonVQVAEConfig.attn_type={hf['attn_type']!r}: only 'vanilla' is supported")
  keys = {k: hf[k] for k in vqgan.MODEL_KEYS if k in hf}
  keys["channel_multiplier"] = tuple(keys.get("channel_multiplier", (1, 1, 2, 2, 4)))
  keys["attn_resolutions"] = tuple(keys.get("attn_resolutions") or ())
  keys.update(overrides)
  return vqgan.model_config(**keys)


def save_tokenizer(params, config, out_dir: str) -> None:
  """The full tokenizer: `vqgan.safetensors` (Chameleon/taming key names) + `config.json` (config.vqgan); `out_dir`
  may be local or gs://..."""
  from safetensors.numpy import save
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / WEIGHTS_FILE).write_bytes(save(export_state_dict(params)))
  (out / CONFIG_FILE).write_text(json.dumps(config_to_json(config), indent=1, sort_keys=True))


def config_to_json(config) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}


def load_tokenizer(out_dir: str):
  """(params, config.vqgan) from a directory `save_tokenizer` wrote; bit-exact."""
  import jax
  from safetensors.numpy import load
  directory = epath.Path(out_dir)
  try:
    config = config_from_hf(json.loads((directory / CONFIG_FILE).read_text()))
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f"{directory / CONFIG_FILE}: not a readable VQGAN tokenizer config ({type(e).__name__}: "
                     f"{e})") from e
  vqgan.validate(config)
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  try:
    state = load((directory / WEIGHTS_FILE).read_bytes())
  except Exception as e:  # safetensors raises its own types for truncated or foreign files
    raise ValueError(f"{directory / WEIGHTS_FILE}: not a readable VQGAN weights file ({type(e).__name__}: "
                     f"{e})") from e
  return import_state_dict(state, shapes), config
