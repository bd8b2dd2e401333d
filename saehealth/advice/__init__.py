"""Rules that explain an unhealthy result and say what to change in training.

Each rule (rules.py) reads the metrics, the verdicts and what the checkpoint records about its training
(`result.sae.training`: training_tokens, lr, l1_coefficient, k, normalize_activations, ...) and returns a
`Finding` whose detail cites the numbers that triggered it. What to change depends on the architecture:
a TopK SAE has no sparsity penalty, a JumpReLU SAE's penalty is on L0, a standard SAE's on L1; knobs.py
holds that knowledge, so every rule asks it rather than assuming a standard SAE. When every measured
check is healthy and no rule fires, the advice is a single "Nothing to fix".
"""

from saehealth.advice.context import Finding, per_letter_absorption
from saehealth.advice.rules import RULES, SEVERITIES, advise

__all__ = ["RULES", "SEVERITIES", "Finding", "advise", "per_letter_absorption"]
