"""SAEBench 0.6 result files from saehealth's own computation: its core and absorption_first_letter evals.

`sums.py` keeps the running sums that SAEBench's own definitions need where they differ from saehealth's
(METRICS.md), `core.py` turns them into SAEBench's core metrics, `export.py` writes the result files.
"""

SAEBENCH_VERSION = "0.6.0"
# Why an evaluation cannot be exported: SAEBench's core schema requires every one of its metrics.
NEEDS_REPLAY = (
    "--saebench-out: SAEBench's core file requires loss and KL, which an activation cache cannot give: "
    "evaluate with the model instead of --activations."
)
NEEDS_GEOMETRY = "--saebench-out: SAEBench's core file requires the latents' geometry: drop --skip geometry."
