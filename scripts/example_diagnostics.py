#!/usr/bin/env python
"""The report excerpts of docs/diagnostics.md: hand-set SAEs on the built-in model, offline, in about 3 minutes.

    python scripts/example_diagnostics.py [--out /tmp/diagnostics_example] [--tokens 4096]

An SAE that reconstructs x exactly (f = relu(x + C), x̂ = f − C) and one that returns x / 2, both at
blocks.0.hook_resid_post, with a recorded training context of 64 evaluated at 128: prints the "Diagnostics beyond
the averages" section of the half-scaled SAE's report.md, its pathological ratio, the differences of `compare`
over both, and the whole replacement of the half-scaled SAE with another at blocks.1.hook_resid_post.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

HOOK = "blocks.0.hook_resid_post"


def scaled_identity_sae(folder: Path, scale: float, context_size: int | None = None, hook: str = HOOK) -> Path:
    """A SAELens StandardSAE whose reconstruction is scale · x exactly (128 latents, every one always on)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    import saehealth

    shift = 1000.0
    cfg = StandardSAEConfig(d_in=128, d_sae=128, apply_b_dec_to_input=False)
    cfg.metadata.model_name = saehealth.BUILTIN_MODEL
    cfg.metadata.hook_name = hook
    if context_size is not None:
        cfg.metadata.context_size = context_size
    sae = StandardSAE(cfg)
    weights = {
        "W_enc": torch.eye(128),
        "b_enc": torch.full((128,), shift),
        "W_dec": scale * torch.eye(128),
        "b_dec": torch.full((128,), -shift * scale),
    }
    sae.load_state_dict(weights)
    sae.save_model(folder)
    return folder


def main() -> None:
    from saehealth.compare import compare
    from saehealth.evaluation import evaluate
    from saehealth.report.compare_differences import differences_markdown, replace_all_markdown

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/diagnostics_example"))
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    exact = scaled_identity_sae(args.out / "checkpoints" / "exact", 1.0, context_size=64)
    half = scaled_identity_sae(args.out / "checkpoints" / "half", 0.5, context_size=64)
    options = {"n_tokens": args.tokens, "skip": ("absorption",), "examples": 0, "force": True}
    result = evaluate(half, out=args.out / "half", context_length=128, **options)
    report = (args.out / "half" / "report.md").read_text()
    start = report.index("## Diagnostics beyond the averages")
    end = report.index("\n## ", start + 1)
    print(report[start:end].strip(), "\n")
    m = result.metrics
    print(
        f"next_token_agreement {m['next_token_agreement']:.4f}, top5_overlap {m['top5_overlap']:.4f}, "
        f"pathological_ratio {m['pathological_ratio']:.3f} ± {result.uncertainty['pathological_ratio']:.3f} "
        f"(KL_sae {m['kl_div_with_sae']:.4f}, KL_random {m['kl_div_random']:.4f})\n"
    )
    comparison = compare([str(exact), str(half)], out=args.out / "compare", **options)
    print("\n".join(differences_markdown(comparison.differences)))
    later = scaled_identity_sae(args.out / "checkpoints" / "half_1", 0.5, hook="blocks.1.hook_resid_post")
    run = compare([str(half), str(later)], out=args.out / "replace_all", replace_all=True, **options)
    for entry in run.entries:
        m = entry.result.metrics
        print(f"{entry.name} alone: loss recovered {m['loss_recovered']:.4f}, Δ CE {m['delta_ce']:.4f}")
    print("\n".join(replace_all_markdown(run.replace_all)))


if __name__ == "__main__":
    main()
