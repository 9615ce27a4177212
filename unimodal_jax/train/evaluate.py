"""Held-out evaluation: loss and perplexity, overall and per target modality, on a fixed set of batches.

The same first `eval.num_batches` batches of the held-out shards (unshuffled) are scored every time, so
evaluations at different steps are comparable.
"""
import itertools

import jax
import numpy as np

from unimodal_jax.data import pipeline
from unimodal_jax.data.vocab import MODALITIES
from unimodal_jax.model.loss import metrics_from_sums


def held_out_batches(config, paths, *, process_index: int, process_count: int) -> list:
  """This process's rows of the first eval.num_batches batches of `paths`, read in order."""
  eval_config = config.copy_and_resolve_references()
  eval_config.data.shuffle = False
  eval_config.data.worker_count = 0
  eval_config.data.source = "shards"  # `paths`, whatever the training source
  dataset = pipeline.make_dataset(eval_config, paths, process_index=process_index, process_count=process_count)
  return list(itertools.islice(iter(dataset), config.eval.num_batches))


def evaluate(eval_step, params, batches) -> dict:
  """eval/loss, eval/perplexity and both per modality present in the batches (global batches on the mesh,
  placed once for the run), token-weighted over all batches."""
  sums = None
  for batch in batches:
    batch_sums = eval_step(params, batch)
    sums = batch_sums if sums is None else jax.tree.map(lambda a, b: a + b, sums, batch_sums)
  m = jax.device_get(metrics_from_sums(sums))
  out = {"eval/loss": float(m["loss"]), "eval/perplexity": float(np.exp(m["ce_loss"])),
         "eval/num_tokens": float(m["num_tokens"])}
  for name in MODALITIES:
    if m[f"num_tokens/{name}"] > 0:
      out[f"eval/loss/{name}"] = float(m[f"loss/{name}"])
      out[f"eval/perplexity/{name}"] = float(np.exp(m[f"loss/{name}"]))
  return out
