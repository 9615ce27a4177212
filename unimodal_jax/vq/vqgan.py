"""The VQGAN image tokenizer (Make-A-Scene / taming layout, as Chameleon's): encoder, quantizer, decoder.

Modules mirror transformers' `ChameleonVQVAE` (encoder, quantizer) and taming's `Decoder` name for name, NHWC.
Images are float [-1, 1]; losses and training live in `train/vq_loop.py`, not here.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

MODEL_KEYS = ("resolution", "in_channels", "base_channels", "channel_multiplier", "num_res_blocks",
              "attn_resolutions", "latent_channels", "embed_dim", "num_embeddings", "norm_groups", "beta")


def model_config(**overrides) -> ml_collections.ConfigDict:
  """`config.vqgan`: Chameleon's tokenizer dims by default (512px -> 32x32 codes from 8192 x 256)."""
  c = ml_collections.ConfigDict()
  c.resolution = 512  # input side in pixels
  c.in_channels = 3
  c.base_channels = 128
  c.channel_multiplier = (1, 1, 2, 2, 4)  # one level per entry; len - 1 downsamplings by 2
  c.num_res_blocks = 2  # per encoder level (the decoder has one more, as taming)
  c.attn_resolutions = ()  # feature-map sides with self-attention after each ResNet block
  c.latent_channels = 256  # encoder output / decoder input channels (taming's z_channels)
  c.embed_dim = 256  # codebook entry size
  c.num_embeddings = 8192  # codebook size
  c.norm_groups = 32  # GroupNorm groups (Chameleon: 32); tiny test models use fewer
  c.beta = 0.25  # commitment weight
  c.update(overrides)
  return c


def validate(c) -> None:
  """Errors name the `vqgan.*` key; run before any model is built."""
  mults = tuple(c.channel_multiplier)
  if not mults:
    raise ValueError("config.vqgan.channel_multiplier must not be empty")
  down = 2 ** (len(mults) - 1)
  if c.resolution % down:
    raise ValueError(f"config.vqgan.resolution={c.resolution} is not divisible by the downsampling factor {down} "
                     f"(2 ** (len(channel_multiplier) - 1))")
  for m in (1,) + mults:
    if (c.base_channels * m) % c.norm_groups:
      raise ValueError(f"config.vqgan.norm_groups={c.norm_groups} does not divide the channel count "
                       f"base_channels * {m} = {c.base_channels * m}")
  if c.latent_channels <= 0 or c.embed_dim <= 0 or c.num_embeddings <= 1:
    raise ValueError(f"config.vqgan: latent_channels, embed_dim must be > 0 and num_embeddings > 1, got "
                     f"{c.latent_channels}, {c.embed_dim}, {c.num_embeddings}")


def downsampling(c) -> int:
  """Pixels per code along each side (Chameleon: 16)."""
  return 2 ** (len(c.channel_multiplier) - 1)


def _conv(features, kernel, name, stride=1, padding=None):
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, name=name,
                 precision=jax.lax.Precision.HIGHEST)


def _norm(groups, name):
  # two-pass variance: E[x^2] - E[x]^2 loses the 1e-5 parity with torch's GroupNorm
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
  out_channels: int
  groups: int

  @nn.compact
  def __call__(self, x):
    h = nn.swish(_norm(self.groups, "norm1")(x))
    h = _conv(self.out_channels, 3, "conv1")(h)
    h = nn.swish(_norm(self.groups, "norm2")(h))
    h = _conv(self.out_channels, 3, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the h*w positions, 1x1-conv projections (taming's AttnBlock)."""
  groups: int

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = _norm(self.groups, "norm")(x)
    q, k, v = (_conv(c, 1, n)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))
    weights = jnp.einsum("bic,bjc->bij", q, k, precision=jax.lax.Precision.HIGHEST) * (int(c) ** -0.5)
    out = jnp.einsum("bij,bjc->bic", jax.nn.softmax(weights, axis=-1), v, precision=jax.lax.Precision.HIGHEST)
    return x + _conv(c, 1, "proj_out")(out.reshape(b, hh, ww, c))


class Resample(nn.Module):
  """Downsample: pad right/bottom by 1, 3x3 stride-2 conv. Upsample: nearest x2, 3x3 conv."""
  up: bool

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.up:
      b, h, w, _ = x.shape
      x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
      return _conv(c, 3, "conv")(x)
    return _conv(c, 3, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Level(nn.Module):
  """One resolution: `num_blocks` ResNet blocks (each followed by attention if `attention`), then resampling."""
  out_channels: int
  num_blocks: int
  attention: bool
  resample: str  # "down", "up" or "" (none)
  groups: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.groups, name=f"block_{i}")(x)
      if self.attention:
        x = AttnBlock(self.groups, name=f"attn_{i}")(x)
    if self.resample:
      x = Resample(up=self.resample == "up", name=f"{self.resample}sample")(x)
    return x


class Mid(nn.Module):
  groups: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, name="block_1")(x)
    x = AttnBlock(self.groups, name="attn_1")(x)
    return ResnetBlock(c, self.groups, name="block_2")(x)


class Encoder(nn.Module):
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x):
    c = self.config
    mults, res = tuple(c.channel_multiplier), c.resolution
    x = _conv(c.base_channels, 3, "conv_in")(x)
    for i, m in enumerate(mults):
      last = i == len(mults) - 1
      x = Level(c.base_channels * m, c.num_res_blocks, res in tuple(c.attn_resolutions), "" if last else "down",
                c.norm_groups, name=f"down_{i}")(x)
      res = res if last else res // 2
    x = Mid(c.norm_groups, name="mid")(x)
    x = nn.swish(_norm(c.norm_groups, "norm_out")(x))
    return _conv(c.latent_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, z):
    c = self.config
    mults = tuple(c.channel_multiplier)
    res = c.resolution // downsampling(c)
    x = _conv(c.base_channels * mults[-1], 3, "conv_in")(z)
    x = Mid(c.norm_groups, name="mid")(x)
    for i in reversed(range(len(mults))):
      x = Level(c.base_channels * mults[i], c.num_res_blocks + 1, res in tuple(c.attn_resolutions),
                "up" if i else "", c.norm_groups, name=f"up_{i}")(x)
      res = res * 2 if i else res
    x = nn.swish(_norm(c.norm_groups, "norm_out")(x))
    return _conv(c.in_channels, 3, "conv_out")(x)


def nearest_codes(z, codebook):
  """Index of the nearest codebook row for each vector of z [..., D], by |z|^2 + |e|^2 - 2 z.e (as Chameleon)."""
  flat = z.reshape(-1, z.shape[-1])
  distances = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codebook ** 2, axis=1)
               - 2 * jnp.dot(flat, codebook.T, precision=jax.lax.Precision.HIGHEST))
  return jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(z.shape[:-1])


def quantize(z, codebook, beta):
  """Straight-through vector quantization.

  Returns (z_q with the identity gradient to z, codes, codebook loss mean((sg[z] - e)^2), commitment loss
  beta * mean((z - sg[e])^2)).
  """
  codes = nearest_codes(z, codebook)
  e = codebook[codes]
  codebook_loss = jnp.mean((jax.lax.stop_gradient(z) - e) ** 2)
  commitment_loss = beta * jnp.mean((z - jax.lax.stop_gradient(e)) ** 2)
  return z + jax.lax.stop_gradient(e - z), codes, codebook_loss, commitment_loss


class VQGAN(nn.Module):
  """`encode` images -> (pre-quantization latents, codes); `decode_codes` codes -> images; `__call__` both."""
  config: ml_collections.ConfigDict

  def setup(self):
    c = self.config
    self.encoder = Encoder(c)
    self.decoder = Decoder(c)
    self.quant_conv = _conv(c.embed_dim, 1, "quant_conv")
    self.post_quant_conv = _conv(c.latent_channels, 1, "post_quant_conv")
    # uniform(-1/K, 1/K), as taming's VectorQuantizer2
    scale = 1.0 / c.num_embeddings
    self.codebook = self.param(
        "codebook", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -scale, scale),
        (c.num_embeddings, c.embed_dim))

  def encode(self, images):
    """float [B, H, W, C] in [-1, 1] -> (latents z [B, h, w, embed_dim] after quant_conv, codes int32 [B, h, w])."""
    z = self.quant_conv(self.encoder(images))
    return z, nearest_codes(z, self.codebook)

  def decode_latents(self, z_q):
    return self.decoder(self.post_quant_conv(z_q))

  def decode_codes(self, codes):
    """int [B, h, w] -> float images [B, H, W, C] (unclipped)."""
    return self.decode_latents(self.codebook[codes])

  def __call__(self, images):
    """Reconstruction and the quantizer's outputs: (recon, dict(z, codes, codebook_loss, commitment_loss))."""
    z = self.quant_conv(self.encoder(images))
    z_q, codes, codebook_loss, commitment_loss = quantize(z, self.codebook, self.config.beta)
    recon = self.decode_latents(z_q)
    return recon, {"z": z, "codes": codes, "codebook_loss": codebook_loss, "commitment_loss": commitment_loss}


def init_params(config, key, batch: int = 1):
  """float32 params for `config.vqgan`, initialised in one jitted call (eager init compiles op by op)."""
  c = config
  images = jax.ShapeDtypeStruct((batch, c.resolution, c.resolution, c.in_channels), jnp.float32)
  return jax.jit(lambda k: VQGAN(c).init(k, jnp.zeros(images.shape, images.dtype))["params"])(key)


def to_pixels(images):
  """float [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def from_pixels(images):
  """uint8 [0, 255] -> float32 [-1, 1]: x / 127.5 - 1."""
  return images.astype(jnp.float32) / 127.5 - 1.0
