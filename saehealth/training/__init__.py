"""Train SAEs with SAELens from a config file plus `--key value` overrides.

A thin layer over SAELens' `LanguageModelSAERunnerConfig` and `LanguageModelSAETrainingRunner`:

- A config is a YAML or JSON file (or a dict) holding a `LanguageModelSAERunnerConfig` in SAELens' own
  field names, with the SAE's settings in its `sae` sub-config (`sae: {architecture: topk, k: 64}`) and
  W&B settings in `logger`. A `runner_cfg.json` written by an earlier run is a valid config.
- Shortcuts: any field of `sae` or `logger` may also be given at top level (`k: 64`, `log_to_wandb:
  true`), or dotted (`sae.k: 64`); and saehealth adds `architecture`, `layer` (hook
  `blocks.N.hook_resid_post`), `expansion_factor` (d_sae = factor × d_in) and `output_name`.
- d_in is read from the model's hook, so configs never need it.
- Defaults are SAELens' own, except: the built-in model and corpus, hook `blocks.0.hook_resid_post`,
  the standard architecture at expansion factor 8, W&B off, and an activation buffer big enough for
  one training batch (SAELens' default buffer of 20 contexts of 128 tokens is not).
- The built-in model and local model folders are loaded by `saehealth.models.load_model`, the built-in
  corpus (its `train` split) and local datasets by `saehealth.data.load_dataset` (documents shuffled
  with `seed`), and handed to SAELens as `override_model` / `override_dataset`: SAELens' own loaders
  would call the hub for them. Hub models are loaded by SAELens' `load_model` (so the hook can be
  checked before training) and hub datasets by SAELens itself.
- Every key, value, architecture, device and the hook are checked before training starts; mistakes
  raise `saehealth.errors` classes with one-line messages.
- The final SAE is SAELens' own format (cfg.json, sae_weights.safetensors, sparsity.safetensors,
  runner_cfg.json) directly in `checkpoints/<output_name>/` under the current directory (or `output_path`).
  That folder follows saehealth's output rule (`saehealth/output.py`): it must be new, empty or a
  checkpoint saehealth wrote, checked before training starts, and the checkpoint is written to a staging
  folder that replaces it only when training succeeded, so the user's files are never deleted and an
  interrupted run leaves an earlier checkpoint as it was.

The packaged demo config is `DEMO_CONFIG` (the source of truth; `scripts/configs/demo.yaml` is the same
content, pinned by a test); `train("demo")` uses it.
"""

from saehealth.training.configs import DEMO_CONFIG, load_config, parse_overrides, parse_value, split_cli_args
from saehealth.training.fields import architectures
from saehealth.training.plan import TrainingPlan, build_runner_config, plan_training
from saehealth.training.run import check_device, train

__all__ = [
    "DEMO_CONFIG",
    "TrainingPlan",
    "architectures",
    "build_runner_config",
    "check_device",
    "load_config",
    "parse_overrides",
    "parse_value",
    "plan_training",
    "split_cli_args",
    "train",
]
