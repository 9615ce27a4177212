"""LPIPS-style perceptual distance on VGG16 features, from weights the user supplies (nothing is downloaded).

Weights: one safetensors or torch file with torchvision's `vgg16` keys (`features.<i>.weight/bias`) and, optionally,
LPIPS's linear heads (`lin<k>.model.1.weight`, [1, C, 1, 1]); without heads every channel weighs 1/C.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision vgg16.features indices: conv layers, and the ReLU outputs LPIPS taps (conv1_2 ... conv5_3)
CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
TAPS = (2, 7, 14, 21, 28)  # the conv whose ReLU output is a tap
POOL_AFTER = (2, 7, 14, 21)  # max-pool after these convs' ReLU
# LPIPS's ScalingLayer: inputs in [-1, 1] to ImageNet statistics
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def load_weights(path: str) -> dict:
  """{'convs': [(kernel HWIO, bias)] * 13, 'heads': [w [C]] * 5} from `path`; errors name the missing tensor."""
  from unimodal_jax.vq.weights import load_state_dict
  state = load_state_dict(path)
  convs = []
  for index, channels in zip(CONVS, CHANNELS):
    for leaf in ("weight", "bias"):
      if f"features.{index}.{leaf}" not in state:
        raise KeyError(f"vq_train.perceptual_weights={path}: tensor 'features.{index}.{leaf}' (torchvision vgg16) "
                       f"is missing")
    w = np.asarray(state[f"features.{index}.weight"], np.float32)
    if w.shape[0] != channels:
      raise ValueError(f"{path}: 'features.{index}.weight' has {w.shape[0]} output channels, vgg16 has {channels}")
    convs.append((w.transpose(2, 3, 1, 0), np.asarray(state[f"features.{index}.bias"], np.float32)))
  heads = []
  for k, index in enumerate(TAPS):
    key = f"lin{k}.model.1.weight"
    c = CHANNELS[CONVS.index(index)]
    heads.append(np.asarray(state[key], np.float32).reshape(c) if key in state else np.full((c,), 1.0 / c, np.float32))
  return {"convs": convs, "heads": heads}


def _features(weights, x):
  x = (x - SHIFT) / SCALE
  taps = []
  for index, (kernel, bias) in zip(CONVS, weights["convs"]):
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST) + bias
    x = nn.relu(x)
    if index in TAPS:
      taps.append(x)
    if index in POOL_AFTER:
      x = nn.max_pool(x, (2, 2), (2, 2))
  return taps


def distance(weights, a, b):
  """Per-image LPIPS distance [B] between float images a, b [B, H, W, 3] in [-1, 1] (gradients flow to both)."""
  total = 0.0
  for fa, fb, head in zip(_features(weights, a), _features(weights, b), weights["heads"]):
    na = fa / (jnp.sqrt(jnp.sum(fa ** 2, axis=-1, keepdims=True)) + 1e-10)
    nb = fb / (jnp.sqrt(jnp.sum(fb ** 2, axis=-1, keepdims=True)) + 1e-10)
    total = total + jnp.mean(jnp.sum((na - nb) ** 2 * head, axis=-1), axis=(1, 2))
  return total
