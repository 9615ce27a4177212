"""VQGAN training: losses, the PatchGAN discriminator, the jitted data-parallel step, codebook health, the loop.

Reads `config.vqgan` (the model) and `config.vq_train`; writes metrics, orbax checkpoints and the exported tokenizer.
"""
import functools
import json
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from unimodal_jax.config import ConfigError
from unimodal_jax.data import inputs, photos
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import checkpoint
from unimodal_jax.train.metrics import MetricsWriter
from unimodal_jax.vq import perceptual, vqgan
from unimodal_jax.vq import weights as vq_weights

SOURCES = ("photos", "images", "jsonl", "tfds", "array_record")
TOKENIZER_DIR = "tokenizer"  # under the workdir: the exported tokenizer (vq_weights.save_tokenizer)


def train_config(**overrides) -> ml_collections.ConfigDict:
  """`config.vq_train` defaults."""
  c = ml_collections.ConfigDict()
  c.batch_size = 16  # global
  c.num_steps = 1000
  c.learning_rate = 2e-4
  c.warmup_steps = 50
  c.b1 = 0.5  # taming's Adam betas
  c.b2 = 0.9
  c.clip_norm = 1.0
  c.l1_weight = 1.0
  c.l2_weight = 0.0
  c.codebook_weight = 1.0  # scales codebook + commitment (beta is config.vqgan.beta)
  c.perceptual_weight = 0.0  # > 0 needs perceptual_weights
  c.perceptual_weights = ""  # VGG16 (+ LPIPS heads) weights file; see vq/perceptual.py
  c.disc_start = -1  # step the PatchGAN loss switches on; -1: never
  c.disc_weight = 0.1
  c.adaptive_disc_weight = False  # taming: disc_weight * ‖∇L_rec‖ / ‖∇L_GAN‖ at the decoder's last layer
  c.disc_learning_rate = 2e-4
  c.disc_channels = 32
  c.disc_layers = 2
  c.restart_every = 100  # steps between dead-code restarts (codes unused in that window); 0: never
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval_every = 0  # steps between eval-set PSNR (and once before training); 0: only at the end
  c.source = "photos"  # photos (scikit-image's, bundled) | images (a folder) | jsonl | tfds (name:split) | array_record
  c.source_path = ""  # the folder, JSONL file, TFDS name:split or ArrayRecord glob of `source` (local or gs://)
  c.image_key = "image"  # source='tfds': the feature holding the image
  c.num_eval_images = 32  # source != 'photos': the first images of the source, as centre squares
  c.update(overrides)
  return c


def validate(config) -> None:
  vqgan.validate(config.vqgan)
  t = config.vq_train
  if t.perceptual_weight > 0 and not t.perceptual_weights:
    raise ConfigError("config.vq_train.perceptual_weight > 0 needs config.vq_train.perceptual_weights: a VGG16 "
                      "(+ LPIPS heads) weights file; none is downloaded")
  if t.perceptual_weights and not os.path.exists(t.perceptual_weights):
    raise ConfigError(f"config.vq_train.perceptual_weights: no file at {t.perceptual_weights} (read from local disk: "
                      "copy a gs:// file down first)")
  if t.l1_weight <= 0 and t.l2_weight <= 0:
    raise ConfigError("config.vq_train: l1_weight or l2_weight must be > 0 (a reconstruction loss)")
  if t.source not in SOURCES:
    raise ConfigError(f"config.vq_train.source={t.source!r} is not one of {SOURCES}")
  if t.source != "photos" and not t.source_path:
    raise ConfigError(f"config.vq_train.source={t.source!r} needs config.vq_train.source_path")
  for key in ("batch_size", "num_steps", "log_every", "checkpoint_every"):
    if t[key] < 1:
      raise ConfigError(f"config.vq_train.{key} must be >= 1, got {t[key]}")


class PatchDiscriminator(nn.Module):
  """PatchGAN (taming's NLayerDiscriminator) with GroupNorm in place of BatchNorm: one logit per patch."""
  channels: int
  num_layers: int

  @nn.compact
  def __call__(self, x):
    x = nn.leaky_relu(nn.Conv(self.channels, (4, 4), (2, 2), padding=1)(x), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      x = nn.Conv(self.channels * min(2 ** n, 8), (4, 4), (stride, stride), padding=1, use_bias=False)(x)
      x = nn.leaky_relu(nn.GroupNorm(num_groups=min(8, self.channels))(x), 0.2)
    return nn.Conv(1, (4, 4), padding=1)(x)


def reconstruction_loss(images, recon, l1_weight, l2_weight):
  diff = recon - images
  return l1_weight * jnp.mean(jnp.abs(diff)) + l2_weight * jnp.mean(diff ** 2)


def psnr(images, recon):
  """PSNR in dB on [0, 1] pixels of [-1, 1] images (clipped reconstructions)."""
  mse = jnp.mean(((jnp.clip(recon, -1, 1) - images) / 2.0) ** 2)
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def hinge_d_loss(real_logits, fake_logits):
  return 0.5 * (jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits)))


def code_stats(counts: np.ndarray) -> dict:
  """Codebook health from code counts over a window: usage %, perplexity, dead codes."""
  total = counts.sum()
  p = counts / max(total, 1)
  entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
  return {"codebook/usage_pct": 100.0 * np.mean(counts > 0), "codebook/perplexity": float(np.exp(entropy)),
          "codebook/dead_codes": float(np.sum(counts == 0))}


def _optimizer(lr, t):
  schedule = optax.linear_schedule(0.0, lr, max(t.warmup_steps, 1))
  return optax.chain(optax.clip_by_global_norm(t.clip_norm), optax.adam(schedule, b1=t.b1, b2=t.b2))


def init_state(config, key):
  """Train state as a dict of arrays: step, params, opt_state, disc_params, disc_opt_state, restart_counts."""
  m, t = config.vqgan, config.vq_train
  k_model, k_disc = jax.random.split(key)
  params = vqgan.init_params(m, k_model)
  images = jnp.zeros((1, m.resolution, m.resolution, m.in_channels), jnp.float32)
  disc_params = PatchDiscriminator(t.disc_channels, t.disc_layers).init(k_disc, images)["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": _optimizer(t.learning_rate, t).init(params),
          "disc_params": disc_params, "disc_opt_state": _optimizer(t.disc_learning_rate, t).init(disc_params),
          "restart_counts": jnp.zeros((m.num_embeddings,), jnp.int32)}


def adaptive_weight(grad_rec, grad_gan, eps: float = 1e-4):
  """taming's λ = ‖∇L_rec‖ / (‖∇L_GAN‖ + eps), clipped to [0, 1e4], from the gradients at the decoder's last
  layer."""
  return jnp.clip(jnp.linalg.norm(grad_rec) / (jnp.linalg.norm(grad_gan) + eps), 0.0, 1e4)


def last_layer(tree):
  """The leaf of the decoder's output convolution's kernel, where taming measures both gradients."""
  return tree["decoder"]["conv_out"]["kernel"]


def make_loss_parts(config, lpips_weights=None):
  """loss_parts(params, disc_params, images [-1, 1], use_gan) -> ((reconstruction-side loss, adversarial loss or 0),
  (metrics, recon, codes)): the two losses whose gradients the train step combines."""
  m, t = config.vqgan, config.vq_train
  model, disc = vqgan.VQGAN(m), PatchDiscriminator(t.disc_channels, t.disc_layers)

  def loss_parts(params, disc_params, images, use_gan):
    recon, aux = model.apply({"params": params}, images)
    rec = reconstruction_loss(images, recon, t.l1_weight, t.l2_weight)
    quant = t.codebook_weight * (aux["codebook_loss"] + aux["commitment_loss"])
    nll = rec + quant
    metrics = {"loss/reconstruction": rec, "loss/codebook": aux["codebook_loss"],
               "loss/commitment": aux["commitment_loss"], "psnr": psnr(images, recon)}
    if lpips_weights is not None and t.perceptual_weight > 0:
      perceptual_loss = jnp.mean(perceptual.distance(lpips_weights, recon, images))
      nll += t.perceptual_weight * perceptual_loss
      metrics["loss/perceptual"] = perceptual_loss
    adversarial = -jnp.mean(disc.apply({"params": disc_params}, recon)) if use_gan else jnp.zeros(())
    return (nll, adversarial), (metrics, recon, aux["codes"])
  return loss_parts


def make_train_step(config, lpips_weights=None):
  """step(state, images uint8 [B, H, W, C], use_gan: static) -> (state, metrics, code counts [K])."""
  m, t = config.vqgan, config.vq_train
  disc = PatchDiscriminator(t.disc_channels, t.disc_layers)
  optimizer, disc_optimizer = _optimizer(t.learning_rate, t), _optimizer(t.disc_learning_rate, t)
  loss_parts = make_loss_parts(config, lpips_weights)

  def generator_grads(params, disc_params, images, use_gan):
    """Gradients of nll + w * adversarial, w = disc_weight (times λ when adaptive): one forward, two backward."""
    (nll, adversarial), vjp, (metrics, recon, codes) = jax.vjp(
        lambda p: loss_parts(p, disc_params, images, use_gan), params, has_aux=True)
    grad_nll, = vjp((jnp.ones(()), jnp.zeros(())))
    if not use_gan:
      metrics["loss"] = nll
      return grad_nll, metrics, recon, codes
    grad_gan, = vjp((jnp.zeros(()), jnp.ones(())))
    weight = t.disc_weight
    if t.adaptive_disc_weight:
      weight = weight * jax.lax.stop_gradient(adaptive_weight(last_layer(grad_nll), last_layer(grad_gan)))
      metrics["disc_weight"] = weight
    metrics["loss/adversarial"], metrics["loss"] = adversarial, nll + weight * adversarial
    return jax.tree.map(lambda a, b: a + weight * b, grad_nll, grad_gan), metrics, recon, codes

  @functools.partial(jax.jit, static_argnames="use_gan", donate_argnums=0)
  def step(state, pixels, use_gan):
    images = vqgan.from_pixels(pixels)
    grads, metrics, recon, codes = generator_grads(state["params"], state["disc_params"], images, use_gan)
    metrics["grad_norm"] = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    state = {**state, "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
    if use_gan:
      def d_loss(disc_params):
        real, fake = (disc.apply({"params": disc_params}, x) for x in (images, jax.lax.stop_gradient(recon)))
        return hinge_d_loss(real, fake)
      loss_d, d_grads = jax.value_and_grad(d_loss)(state["disc_params"])
      d_updates, d_opt = disc_optimizer.update(d_grads, state["disc_opt_state"], state["disc_params"])
      state = {**state, "disc_params": optax.apply_updates(state["disc_params"], d_updates), "disc_opt_state": d_opt}
      metrics["loss/discriminator"] = loss_d
    counts = jnp.bincount(codes.reshape(-1), length=m.num_embeddings).astype(jnp.int32)
    state = {**state, "step": state["step"] + 1, "restart_counts": state["restart_counts"] + counts}
    return state, metrics, counts

  return step


def make_restart(config):
  """restart(state, pixels, key) -> (state, number restarted): codes unused since the last restart take the
  encoder outputs of random positions of the batch, with their Adam moments zeroed; the window's counts reset."""
  m = config.vqgan
  model = vqgan.VQGAN(m)

  @functools.partial(jax.jit, donate_argnums=0)
  def restart(state, pixels, key):
    z, _ = model.apply({"params": state["params"]}, vqgan.from_pixels(pixels), method=vqgan.VQGAN.encode)
    flat = z.reshape(-1, z.shape[-1])
    picks = flat[jax.random.randint(key, (m.num_embeddings,), 0, flat.shape[0])]
    dead = state["restart_counts"] == 0
    codebook = jnp.where(dead[:, None], picks, state["params"]["codebook"])
    state = {**state, "params": {**state["params"], "codebook": codebook},
             "restart_counts": jnp.zeros_like(state["restart_counts"])}
    if "opt_state" in state:
      state["opt_state"] = jax.tree_util.tree_map_with_path(
          lambda path, x: jnp.where(dead[:, None], 0, x) if _is_codebook(path, x, codebook) else x,
          state["opt_state"])
    return state, jnp.sum(dead)

  return restart


def _is_codebook(path, leaf, codebook) -> bool:
  """An optimizer-state leaf that mirrors the codebook (Adam's mu/nu for it)."""
  return getattr(path[-1], "key", None) == "codebook" and getattr(leaf, "shape", None) == codebook.shape


def make_reconstruct(config):
  model = vqgan.VQGAN(config.vqgan)

  @jax.jit
  def reconstruct(params, pixels):
    z, codes = model.apply({"params": params}, vqgan.from_pixels(pixels), method=vqgan.VQGAN.encode)
    recon = model.apply({"params": params}, codes, method=vqgan.VQGAN.decode_codes)
    return vqgan.to_pixels(recon), codes
  return reconstruct


def evaluate(reconstruct, params, pixels: np.ndarray) -> dict:
  """PSNR (dB, uint8 pixels) and codebook usage of the eval images."""
  recon, codes = reconstruct(params, pixels)
  mse = np.mean((np.asarray(recon, np.float64) - pixels) ** 2)
  counts = np.bincount(np.asarray(codes).reshape(-1), minlength=params["codebook"].shape[0])
  return {"eval/psnr": 10 * math.log10(255.0 ** 2 / max(mse, 1e-10)),
          "eval/codebook_usage_pct": 100.0 * np.mean(counts > 0)}


def save_figure(originals: np.ndarray, reconstructions: np.ndarray, path, columns: int = 8) -> None:
  """A PNG of originals (odd rows) above their reconstructions (even rows), `columns` images per row."""
  n, size = len(originals), originals.shape[1]
  rows = -(-n // columns)
  canvas = np.full((2 * rows * (size + 2), columns * (size + 2), 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, columns)
    for k, image in enumerate((originals[i], reconstructions[i])):
      top, left = (2 * r + k) * (size + 2), c * (size + 2)
      canvas[top:top + size, left:left + size] = image
  from PIL import Image
  with epath.Path(path).open("wb") as f:
    Image.fromarray(canvas).save(f, format="PNG")


def training_images(config):
  """The image source of `config.vq_train`: the bundled photos, or random crops of any ingest input."""
  t = config.vq_train
  if t.source == "photos":
    return photos.PhotoCrops(config.vqgan.resolution, config.seed)
  source = inputs.from_flags(**{"images" if t.source == "images" else t.source: t.source_path},
                             image_key=t.image_key)
  return photos.SourceCrops(source, config.vqgan.resolution, config.seed, num_eval=t.num_eval_images)


def train(config, workdir: str) -> dict:
  """Train `config.vqgan` on the images of config.vq_train.source; resume from the newest checkpoint in `workdir`.

  Returns the final eval metrics; writes `<workdir>/tokenizer/` (weights in Chameleon/taming names + config).
  """
  validate(config)
  m, t = config.vqgan, config.vq_train
  run = epath.Path(workdir)  # local or gs://...
  run.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (run / "config.json").write_text(config.to_json_best_effort(indent=1))
  mesh = mesh_lib.create_mesh(config.mesh)
  data_size = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % data_size:
    raise ConfigError(f"config.vq_train.batch_size={t.batch_size} is not divisible by the data-parallel size "
                      f"{data_size} (mesh data x fsdp)")
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
  lpips_weights = perceptual.load_weights(t.perceptual_weights) if t.perceptual_weight > 0 else None
  state = jax.jit(functools.partial(init_state, config), out_shardings=replicated)(jax.random.key(config.seed))
  manager = checkpoint.make_manager(workdir, t)
  state = checkpoint.restore_latest(manager, state)
  data = training_images(config)
  local_batch = t.batch_size // jax.process_count()
  step_fn, restart_fn = make_train_step(config, lpips_weights), make_restart(config)
  reconstruct = make_reconstruct(config)
  eval_pixels = data.eval_images()
  writer = MetricsWriter(workdir, resume_step=int(state["step"]))
  log_counts, start, tick = np.zeros(m.num_embeddings, np.int64), int(state["step"]), time.time()
  if t.eval_every and start == 0:  # the baseline the run improves on
    writer.write(0, evaluate(reconstruct, state["params"], eval_pixels))
  for step in range(start, t.num_steps):
    pixels = jax.make_array_from_process_local_data(
        batch_sharding, data.batch(step, local_batch, jax.process_index()))
    use_gan = 0 <= t.disc_start <= step
    state, metrics, counts = step_fn(state, pixels, use_gan)
    log_counts += np.asarray(counts)
    host_step = step + 1
    if t.restart_every and host_step % t.restart_every == 0:
      state, restarted = restart_fn(state, pixels, jax.random.fold_in(jax.random.key(config.seed + 1), host_step))
      metrics["codebook/restarted"] = restarted
    if host_step % t.log_every == 0 or host_step == t.num_steps:
      logged = {k: float(v) for k, v in metrics.items()}
      logged.update(code_stats(log_counts))
      logged["step_time_s"] = (time.time() - tick) / max(host_step - start, 1)
      if t.eval_every and host_step % t.eval_every == 0:
        logged.update(evaluate(reconstruct, state["params"], eval_pixels))
      writer.write(host_step, logged)
      log_counts[:], tick, start = 0, time.time(), host_step
    checkpoint.save(manager, host_step, state, config, every=t.checkpoint_every, force=host_step == t.num_steps,
                    host_copy=True)
  manager.wait_until_finished()
  final = evaluate(reconstruct, state["params"], eval_pixels)
  writer.write(t.num_steps, final)
  writer.close()
  params = jax.device_get(state["params"])
  if jax.process_index() == 0:
    vq_weights.save_tokenizer(params, m, str(run / TOKENIZER_DIR))
    recon = np.asarray(reconstruct(params, eval_pixels)[0])
    save_figure(eval_pixels, recon, run / "reconstructions.png")
    (run / "eval.json").write_text(json.dumps(final, indent=1))
  return final
