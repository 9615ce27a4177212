"""vq/perceptual.py's LPIPS distance against the reference implementation (the `lpips` package of Zhang et al.,
v0.1, net='vgg'), with the same weights loaded into both, on a fixed pair of images (a photo and a distorted copy).

1. Random VGG16 weights with the linear heads lpips ships (no download): runs wherever `lpips` is installed.
2. The user's weights (UNIMODAL_LPIPS_WEIGHTS=<file> with torchvision's `features.<i>.*` and lpips's
   `lin<k>.model.1.weight`, the file vq_train.perceptual_weights takes): skipped with a message when unset.

The reference's VGG16 trunk comes from torchvision. Where torchvision cannot be imported (PyPI's torchvision 0.28.0
wheel is a CUDA build whose operator library does not load against the CPU torch 2.13.0 installed here), the trunk is
torchvision's configuration "D" layer list built in torch below; everything LPIPS adds on top (input scaling, taps,
channel normalisation, heads, spatial average) is still lpips's own code.
"""
import copy
import os
import sys
import types

import jax
import numpy as np
import pytest

from unimodal_jax.data import photos
from unimodal_jax.vq import perceptual

WEIGHTS_ENV = "UNIMODAL_LPIPS_WEIGHTS"
VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")  # torchvision cfg


def _vgg16_from_configuration_d(torch):
  """A stand-in `torchvision.models` with vgg16().features as torchvision lays it out (same module indices)."""
  def vgg16(**_):
    layers, channels = [], 3
    for v in VGG16_D:
      if v == "M":
        layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [torch.nn.Conv2d(channels, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
        channels = v
    return types.SimpleNamespace(features=torch.nn.Sequential(*layers))
  return types.SimpleNamespace(vgg16=vgg16)


@pytest.fixture(scope="module")
def reference():
  """lpips.LPIPS(net='vgg') in eval mode, its trunk randomly initialised (seeded), its heads the shipped v0.1 ones."""
  torch = pytest.importorskip("torch", reason="the LPIPS reference needs torch (the torch extra)")
  try:
    import torchvision.models  # noqa: F401
  except (ImportError, RuntimeError):  # absent, or a build whose operators do not load against this torch
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    models = _vgg16_from_configuration_d(torch)
    sys.modules["torchvision"] = types.SimpleNamespace(models=models)
  try:
    lpips = pytest.importorskip("lpips", reason="the LPIPS reference implementation (pip install lpips) is absent")
    torch.manual_seed(0)
    model = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
  finally:
    if isinstance(sys.modules.get("torchvision"), types.SimpleNamespace):
      del sys.modules["torchvision"]
  return model


def torch_state(model) -> dict:
  """The reference's weights under the names vq_train.perceptual_weights uses (torchvision vgg16 + lpips heads)."""
  state = {}
  for name, value in model.state_dict().items():
    if name.startswith("net.slice"):  # net.slice<k>.<i>.weight: <i> is the torchvision features index
      state["features." + name.split(".", 2)[2]] = value.numpy()
    elif name.startswith("lin") and name.split(".")[0][3:].isdigit():
      state[name] = value.numpy()
  return state


def image_pair() -> tuple[np.ndarray, np.ndarray]:
  """A 64x48 crop of the first bundled photo and a noisier, brighter copy, as [1, H, W, 3] floats in [-1, 1]."""
  photo = photos.sample_photos()[0][1]
  photo = np.repeat(photo[..., None], 3, -1) if photo.ndim == 2 else photo[..., :3]
  a = photo[:64, :48].astype(np.float32) / 127.5 - 1
  b = np.clip(a + 0.2 * np.random.default_rng(0).normal(size=a.shape) + 0.1, -1, 1).astype(np.float32)
  return a[None], b[None]


def reference_distance(model, a, b) -> np.ndarray:
  import torch
  with torch.no_grad():
    nchw = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (a, b)]
    return model(*nchw, normalize=False).numpy().reshape(-1)


def ours(weights_file, a, b) -> np.ndarray:
  weights = perceptual.load_weights(str(weights_file))
  return np.asarray(jax.jit(perceptual.distance)(weights, a, b))


def test_lpips_with_random_vgg16_weights_matches_the_reference(reference, tmp_path):
  from safetensors.numpy import save_file
  state = torch_state(reference)
  assert len(state) == 2 * 13 + 5, sorted(state)
  save_file(state, str(tmp_path / "lpips_vgg.safetensors"))
  a, b = image_pair()
  batch_a, batch_b = np.concatenate([a, b, a]), np.concatenate([b, a, a])
  want = reference_distance(reference, batch_a, batch_b)
  assert want[0] > 1e-3 and want[2] == 0  # a real distance, and none from an image to itself
  np.testing.assert_allclose(ours(tmp_path / "lpips_vgg.safetensors", batch_a, batch_b), want, rtol=1e-4, atol=1e-7)


def test_lpips_with_the_users_weights_matches_the_reference(reference):
  path = os.environ.get(WEIGHTS_ENV)
  if not path:
    pytest.skip(f"set {WEIGHTS_ENV}=<safetensors or torch file with torchvision vgg16 'features.<i>.*' and lpips "
                "'lin<k>.model.1.weight'> to check LPIPS on real weights (none are downloaded)")
  from unimodal_jax.vq.weights import load_state_dict
  import torch
  state, model = load_state_dict(path), copy.deepcopy(reference)
  trunk = {}
  for name in model.state_dict():
    if name.startswith("net.slice"):
      trunk[name] = torch.from_numpy(np.asarray(state["features." + name.split(".", 2)[2]], np.float32))
    elif name.startswith("lin") and name in state:
      trunk[name] = torch.from_numpy(np.asarray(state[name], np.float32))
  model.load_state_dict(trunk, strict=False)
  a, b = image_pair()
  np.testing.assert_allclose(ours(path, a, b), reference_distance(model, a, b), rtol=1e-4)
