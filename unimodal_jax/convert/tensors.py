"""Safetensors directories and our param trees, tensor by tensor: the I/O every converter (transformers' Chameleon,
the MoT PyTorch layout, the VQ tokenizer) shares. A converter supplies a plan (its `Tensor`s) and per-kind transforms.
"""
from collections.abc import Callable, Iterator, Mapping
import dataclasses
import json
import math
import os

import numpy as np
import tqdm
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class ConversionError(ValueError):
  """A checkpoint or config that does not convert exactly; the message names the tensor, the file or the key."""


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One PyTorch-side tensor and the part of our tree it holds.

  Our leaf is [(layers,) (experts,) *our_shape]; `layer`/`expert` index it (None: no such axis). `kind` names the
  converter's transform (e.g. 'linear': our [in..., out...] kernel <-> its [out, in] weight); `ours` is None for a
  tensor our model has no place for (it must then be all zeros on import).
  """

  name: str
  ours: str | None  # '/'-joined path in our tree
  layer: int | None
  shape: tuple  # theirs
  our_shape: tuple  # ours, for one layer and one expert
  kind: str
  expert: int | None = None

  @property
  def index(self) -> tuple:
    return tuple(i for i in (self.layer, self.expert) if i is not None)


def leaf_shape(t: Tensor, num_layers: int, num_experts: int = 1) -> tuple:
  """The shape of our whole leaf that `t` is a slice of."""
  return ((num_layers,) if t.layer is not None else ()) + ((num_experts,) if t.expert is not None else ()) \
      + t.our_shape


def leaf_paths(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from leaf_paths(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}"


def node(tree, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def insert(tree: dict, path: str, value):
  *parents, last = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[last] = value


def check_params(params, plan: list[Tensor], num_layers: int, num_experts: int = 1):
  """Our tree holds exactly the leaves `plan` reads, in its shapes (read from `.shape`, not from the data)."""
  wanted, given = {t.ours for t in plan if t.ours}, set(leaf_paths(params))
  if wanted != given:
    raise ConversionError(f"params do not match the model config: missing {sorted(wanted - given)}, "
                          f"unexpected {sorted(given - wanted)}")
  for t in plan:
    expected = leaf_shape(t, num_layers, num_experts)
    if t.ours and np.shape(node(params, t.ours)) != expected:
      raise ConversionError(f"params {t.ours} has shape {np.shape(node(params, t.ours))}; the model config gives "
                            f"{expected}")


def arrays(params, plan: list[Tensor], to_theirs: Callable) -> Iterator[np.ndarray]:
  """Each planned tensor in plan order as float32, reading each of our leaves once; `to_theirs(x, t)` transforms our
  slice `x` (None for a tensor with no place in our tree)."""
  path, leaf = None, None
  for t in plan:
    if t.ours is None:
      yield np.zeros(t.shape, np.float32)
      continue
    if t.ours != path:
      path, leaf = t.ours, np.asarray(node(params, t.ours))
    yield np.ascontiguousarray(to_theirs(leaf[t.index], t), dtype=np.float32)


def fill(plan: list[Tensor], files: dict, where: str, from_theirs: Callable, num_layers: int, num_experts: int = 1,
         *, desc: str, progress: bool = False) -> dict:
  """Our params (nested dicts of float32 numpy arrays) from the tensors `files` holds; `from_theirs(w, t)` transforms
  each. A tensor our model has no place for must be zeros."""
  params = {}
  for t in tqdm.tqdm(plan, unit="tensor", desc=desc, disable=not progress):
    w = read(files, t, where)
    if t.ours is None:
      if np.any(w):
        raise ConversionError(f"{where}: tensor {t.name} is non-zero; our model has no place for it")
    elif not t.index:
      insert(params, t.ours, from_theirs(w, t))
    else:
      if all(i == 0 for i in t.index):
        insert(params, t.ours, np.empty(leaf_shape(t, num_layers, num_experts), np.float32))
      node(params, t.ours)[t.index] = from_theirs(w, t)
  return params


def _shards(plan, max_bytes):
  shards, size = [[]], 0
  for t in plan:
    nbytes = 4 * math.prod(t.shape)
    if shards[-1] and size + nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes
  return shards


def write_shards(plan, tensors: Iterator[np.ndarray], out_dir, max_shard_bytes, *, desc, progress) -> tuple[dict, int]:
  """Write the float32 `tensors` (an iterator in `plan` order) as `model-0000k-of-0000n.safetensors` files of at most
  `max_shard_bytes` each, one tensor in memory at a time beyond the shard being filled.

  Returns the index's weight map (tensor name -> file) and the total bytes written.
  """
  shards = _shards(plan, max_shard_bytes)
  weight_map = {}
  with tqdm.tqdm(total=len(plan), unit="tensor", desc=desc, disable=not progress) as bar:
    for k, shard in enumerate(shards):
      filename = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
      out = {}
      for t in shard:
        out[t.name] = next(tensors)
        bar.update()
      save_file(out, os.path.join(out_dir, filename), metadata={"format": "pt"})
      weight_map.update(dict.fromkeys(out, filename))
  return weight_map, sum(4 * math.prod(t.shape) for t in plan)


def write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def write_index(out_dir, weight_map: dict, total_bytes: int):
  write_json(os.path.join(out_dir, INDEX_FILE), {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})


def read_config(directory) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ConversionError(f"{directory} has no config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path} is not valid JSON: {e}") from e


def file_headers(path) -> dict:
  """tensor name -> (path, shape) of one safetensors file, from its header."""
  try:
    with safe_open(path, framework="flax") as f:
      return {name: (path, tuple(f.get_slice(name).get_shape())) for name in f.keys()}
  except Exception as e:  # safetensors raises its own error types for truncated or foreign files
    raise ConversionError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e


def tensor_files(directory) -> dict:
  """tensor name -> (its safetensors file, its shape), from the headers of a directory's index or single file."""
  index = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(os.path.join(directory, SINGLE_FILE)):
    files = [SINGLE_FILE]
  else:
    raise ConversionError(f"{directory} has neither {INDEX_FILE} nor {SINGLE_FILE}")
  found = {}
  for filename in files:
    found.update(file_headers(os.path.join(directory, filename)))
  return found


def read(files: dict, t: Tensor, where) -> np.ndarray:
  """Tensor `t` as float32, checked against its planned shape."""
  if t.name not in files:
    raise ConversionError(f"{where}: missing tensor {t.name} (expected shape {t.shape})")
  path, shape = files[t.name]
  if shape != t.shape:
    raise ConversionError(f"{where}: tensor {t.name} has shape {shape}; config.json gives {t.shape}")
  # Opened per tensor so that its memory map, which counts as resident, is dropped after each read.
  # framework="flax": numpy has no bfloat16, the dtype of published Chameleon checkpoints.
  with safe_open(path, framework="flax") as f:
    return np.asarray(f.get_tensor(t.name)).astype(np.float32)
