#!/usr/bin/env bash
# Train an SAE with SAELens from a runner config, with --key value overrides:
#   scripts/run_training.sh [CONFIG] [--key value ...]
#   scripts/run_training.sh scripts/configs/demo.yaml
#   scripts/run_training.sh --model_name meta-llama/Meta-Llama-3-8B --layer 12 --expansion_factor 32 --device cuda
# The same as `saehealth train` (one implementation: saehealth/training/). The SAE lands in
# checkpoints/<output_name>/ under the current directory. PYTHON picks the interpreter (default: python).
set -euo pipefail
exec "${PYTHON:-python}" -m saehealth train "$@"
