"""Size families, parameter counts (against the initialised model) and the sweep plan (runs, branches, FLOPs)."""
import math
import os

import jax
import numpy as np
import pytest

from unimodal_jax.config import ConfigError, load_config_file
from unimodal_jax.model import flops as flops_lib
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.scaling import families, plan
from unimodal_jax.train import validate
from unimodal_jax.train.state import init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPEC = os.path.join(ROOT, "configs", "sweeps", "tiny.py")


def initialised_counts(model_config):
  """(stored, embedding) parameter counts of the Flax model itself, from its abstract init."""
  shapes = jax.eval_shape(lambda: init_params(Transformer(model_config), jax.random.key(0)))
  sizes = {jax.tree_util.keystr(path): math.prod(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(shapes)}
  embedding = sum(v for k, v in sizes.items() if "embedding" in k or "lm_head" in k)
  return sum(sizes.values()), embedding


@pytest.mark.parametrize("changes", [
    {}, {"qkv_bias": True, "qk_norm": "rmsnorm"}, {"qk_norm": "none", "tie_embeddings": True},
    {"num_experts": 2}, {"num_experts": 2, "mot_untied": ("attention", "mlp")}])
def test_param_counts_match_the_initialised_model(changes):
  m = load_config_file(os.path.join(ROOT, "configs", "tiny.py")).model
  m.update(changes)
  counts = families.param_counts(m)
  total, embedding = initialised_counts(m)
  assert (counts.total, counts.embedding) == (total, embedding)
  assert counts.non_embedding == total - embedding
  if m.num_experts == 1:
    assert counts.active_total == counts.total
  else:  # a token uses one expert's copy: the active count is the dense model's
    dense = m.copy_and_resolve_references()
    dense.num_experts = 1
    assert counts.active_total == families.param_counts(dense).total < counts.total


def test_size_rule_keeps_aspect_ratio_and_head_dim_and_scales_the_learning_rate():
  spec = plan.load_spec(TINY_SPEC)
  shapes = [families.size_rule(spec.family, i) for i in range(4)]
  assert [s["model.num_layers"] for s in shapes] == [1, 2, 3, 4]
  assert [s["model.embed_dim"] for s in shapes] == [32, 64, 96, 128]
  assert all(s["model.embed_dim"] == 16 * s["model.num_heads"] for s in shapes)
  assert shapes[1]["optim.learning_rate"] == pytest.approx(spec.family.base_lr)  # base_width 64
  assert shapes[3]["optim.learning_rate"] == pytest.approx(spec.family.base_lr * 0.5 ** 0.5)


def test_tiny_plan_has_one_stable_run_per_size_and_branches_from_its_checkpoints():
  spec = plan.load_spec(TINY_SPEC)
  runs = plan.plan(spec)
  by_name = {r.name: r for r in runs}
  assert [r.name for r in runs] == ["dense_s0_r0.5", "dense_s0_r0.25", "dense_s0_r0.375",
                                    "dense_s1_r0.5", "dense_s1_r0.25", "dense_s1_r0.375"]
  stable, branch = by_name["dense_s1_r0.5"], by_name["dense_s1_r0.25"]
  tokens_per_step = 8 * 64  # configs/tiny.py batch x seq_len
  # 0.25 tokens per non-embedding parameter, rounded to whole steps (multiple of 2)
  assert branch.num_steps == 2 * round(0.25 * stable.n / tokens_per_step / 2) == 40
  assert branch.depends_on == "dense_s1_r0.5" and not stable.depends_on
  assert branch.branch_step == 40 - 8  # a 20% cooldown
  assert "optim.decay_steps=8" in branch.overrides and "optim.schedule=wsd" in branch.overrides
  # the stable run keeps every branch point's checkpoint
  assert "train.checkpoint_every=16" in stable.overrides and "train.keep_period=16" in stable.overrides
  assert {32, 48} <= set(range(0, stable.num_steps + 1, 16))
  args = branch.train_args("configs/tiny.py", "/sw")
  assert args[:2] == ["--config=configs/tiny.py", "--workdir=/sw/runs/dense_s1_r0.25"]
  assert args[-1] == "--config.train.branch_from=/sw/runs/dense_s1_r0.5/checkpoints/32"
  assert branch.wait_for("/sw") == "/sw/runs/dense_s1_r0.5/checkpoints/32"


def test_plan_flops_come_from_model_flops():
  spec = plan.load_spec(TINY_SPEC)
  runs = plan.plan(spec)
  config = load_config_file(spec.base_config)
  plan.apply_overrides(config, runs[3].overrides)
  per_token = flops_lib.train_flops_per_token(config.model, config.data.seq_len)
  assert runs[3].point_flops == pytest.approx(per_token * runs[3].tokens)
  branch = runs[4]
  assert branch.run_flops == pytest.approx(per_token * 8 * 512)  # only its 8 cooldown steps
  assert branch.point_flops == pytest.approx(per_token * 40 * 512)


def test_flop_budgets_give_isoflop_runs_of_equal_compute():
  spec = plan.load_spec(TINY_SPEC)
  spec.budget_kind = "flops"
  spec.budgets = (2e10, 4e10)
  spec.wsd = False
  runs = plan.plan(spec)
  assert len(runs) == 4 and not any(r.depends_on for r in runs)
  for r in runs:  # within one rounding step of the budget
    assert abs(r.point_flops - r.budget) <= r.flops_per_token * 512 * 2
    assert "optim.schedule=wsd" not in r.overrides


def test_bad_specs_name_the_key():
  spec = plan.load_spec(TINY_SPEC)
  spec.budget_kind = "tokens"
  with pytest.raises(ConfigError, match="config.budget_kind"):
    plan.plan(spec)
  spec = plan.load_spec(TINY_SPEC)
  spec.overrides = ("model.num_layer=3",)
  with pytest.raises(ConfigError, match="config.model.num_layer: no such config key"):
    plan.plan(spec)
  spec = plan.load_spec(TINY_SPEC)
  spec.overrides = ("optim.warmup_steps=10",)
  with pytest.raises(ConfigError, match="budget 0.5: the cooldown would start at step 8, inside the 10-step warmup"):
    plan.plan(spec)
  spec = plan.load_spec(TINY_SPEC)
  spec.overrides = ("optim.learning_rate=fast",)
  with pytest.raises(ConfigError, match="config.optim.learning_rate: expected float, got 'fast'"):
    plan.plan(spec)


def test_non_dividing_budgets_snap_branch_points_to_a_grid_and_keep_few_checkpoints():
  spec = plan.load_spec(TINY_SPEC)
  spec.sizes = (3,)
  spec.budgets = (0.21, 0.29, 0.37, 0.43, 1.0)  # branch points with a gcd of 2 before snapping
  runs = plan.plan(spec)
  stable, branches = runs[0], runs[1:]
  every = int(dict(o.split("=") for o in stable.overrides)["train.checkpoint_every"])
  assert f"train.keep_period={every}" in stable.overrides
  grid = plan.branch_grid(stable.num_steps, 0.05, 2)
  assert grid == 2 * round(0.05 * stable.num_steps / 2) and every % grid == 0
  assert stable.num_steps // every <= 20  # the checkpoints the stable run keeps (keep_period), not hundreds
  for b in branches:
    assert b.branch_step % every == 0 and b.branch_step < stable.num_steps - stable.num_steps // 5
    tokens = b.budget * b.n  # still within half a grid step of the nominal budget
    assert abs(b.num_steps * 512 - tokens) <= (grid / 2 + 2) * 512
  spec.branch_grid = 0.5
  with pytest.raises(ConfigError, match="config.branch_grid: dense size 3: budgets .* snap to the same"):
    plan.plan(spec)


def test_the_demo_cpu_spec_trains_unimodal_variants_at_their_own_sizes_on_filtered_data():
  spec = plan.load_spec(os.path.join(ROOT, "configs", "sweeps", "demo_cpu.py"))
  runs = plan.plan(spec)
  sizes = {v: sorted({r.size for r in runs if r.variant == v}) for v in spec.variants}
  assert sizes == {"mixed": [0, 1, 2], "text": [0, 2], "image": [0, 2]}
  assert len(runs) == 3 * (3 + 2 + 2)
  text = next(r for r in runs if r.variant == "text")
  assert "data.document_kinds=text" in text.overrides
  image = next(r for r in runs if r.variant == "image")
  assert {"data.document_kinds=image_text_pair", "data.cfg_dropout=1.0"} <= set(image.overrides)
  for r in runs:  # every run's overrides make a valid config (as unimodal-train will validate it)
    config = load_config_file(spec.base_config)
    plan.apply_overrides(config, r.overrides)
    validate.validate(config, num_devices=1)


def test_variant_sizes_and_mixed_modal_must_name_variants():
  spec = plan.load_spec(os.path.join(ROOT, "configs", "sweeps", "demo_cpu.py"))
  spec.variant_sizes.text = (0, 0)
  with pytest.raises(ConfigError, match=r"config.variant_sizes.text: need distinct size indices"):
    plan.plan(spec)
  spec = plan.load_spec(os.path.join(ROOT, "configs", "sweeps", "demo_cpu.py"))
  spec.variant_sizes.txt = (0,)
  with pytest.raises(ConfigError, match=r"config.variant_sizes.txt: is not one of the variants"):
    plan.plan(spec)
  spec = plan.load_spec(os.path.join(ROOT, "configs", "sweeps", "demo_cpu.py"))
  spec.mixed_modal = ("text", "images", "mixed")
  with pytest.raises(ConfigError, match=r"config.mixed_modal: 'images' is not one of the variants"):
    plan.plan(spec)
