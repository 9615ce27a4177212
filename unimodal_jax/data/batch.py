"""PackedBatch: the contract between the data pipeline and the model (docs/design.md, "Record format and packing").

Every field has shape [batch, seq_len]. The pipeline builds it from numpy; the train step sees it as a
pytree of global jax.Arrays sharded over ('data', 'fsdp') on the batch axis.
"""
import flax.struct
import numpy as np

FIELDS = ("tokens", "targets", "segment_ids", "positions", "modality", "loss_weights")


@flax.struct.dataclass
class PackedBatch:
  tokens: np.ndarray  # int32 input ids
  targets: np.ndarray  # int32 next-token ids within the same document
  segment_ids: np.ndarray  # int32 1..k per packed document, 0 = padding
  positions: np.ndarray  # int32 position inside its document piece, restarting at 0
  modality: np.ndarray  # int32 of `tokens`: 0 text (incl. <boi>/<eoi>), 1 image code
  loss_weights: np.ndarray  # float32, 0 on padding; per-modality weights applied

  @property
  def shape(self):
    return self.tokens.shape

  def num_tokens(self) -> int:
    """Non-padding tokens (an int for numpy batches)."""
    return int(np.sum(np.asarray(self.segment_ids) > 0))


def dtypes():
  return {"tokens": np.int32, "targets": np.int32, "segment_ids": np.int32, "positions": np.int32,
          "modality": np.int32, "loss_weights": np.float32}
