#!/usr/bin/env python
"""Benchmark: `saehealth compare` of 4 SAEs at one hook vs 4 separate `saehealth eval` runs, same tokens.

    python scripts/bench_compare.py [--tokens 20000] [--repeats 5] [--threads 1] [--device cpu] [--cli]

Four SAELens TopK SAEs (d_sae 1024, k = 16, 32, 64, 128: a small sweep) read the built-in model's
blocks.0.hook_resid_post. Measured in one process, alternating, `--repeats` times after a warm-up:
- compare:  `compare()` on the four, --force, including every per-SAE report.md and the comparison files;
- separate: `evaluate()` on each, --force (its result folder and reports, what `saehealth eval` writes);
- the pass alone: one `score_batches` call with four SAEs vs four calls with one.
`--cli` also times the commands end to end as subprocesses (interpreter start and imports included, so
the separate runs pay them four times). Absorption is skipped on both sides (it is per SAE, unshared, and
costs the same either way) unless --with-absorption.

Each run is timed in wall-clock seconds and in CPU seconds of this process (children's for --cli). On a
machine shared with other jobs the wall clock measures the neighbours as much as the code, so torch runs on
`--threads` threads (default 1: CPU seconds are then the work done, without idle threads spinning) and both
medians and their ratios are printed as JSON. The target is compare ≤ 0.5× the separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import saehealth  # noqa: E402
from saehealth.compare import compare  # noqa: E402
from saehealth.data import load_dataset, sequence_batches  # noqa: E402
from saehealth.evaluation import evaluate  # noqa: E402
from saehealth.loading import load_sae  # noqa: E402
from saehealth.replay import splice_site  # noqa: E402
from saehealth.scoring import score_batches  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
KS = (16, 32, 64, 128)


def sweep_saes(root: Path) -> list[Path]:
    """Four randomly initialised TopK SAEs of the demo's width: speed only, the numbers do not matter."""
    from sae_lens import TopKSAE, TopKSAEConfig

    paths = []
    for k in KS:
        torch.manual_seed(k)
        cfg = TopKSAEConfig(d_in=128, d_sae=1024, k=k)
        cfg.metadata.model_name = saehealth.BUILTIN_MODEL
        cfg.metadata.hook_name = HOOK
        folder = root / f"topk_k{k}"
        TopKSAE(cfg).save_model(folder)
        paths.append(folder)
    return paths


def cpu_seconds(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, children: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds(children)
    fn()
    return time.perf_counter() - wall, cpu_seconds(children) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (subprocesses too)")
    parser.add_argument("--with-absorption", action="store_true", help="measure absorption too (both sides)")
    parser.add_argument("--cli", action="store_true", help="also time the commands end to end as subprocesses")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    paths = sweep_saes(work / "saes")
    options = {
        "n_tokens": args.tokens,
        "batch_size": args.batch_size,
        "device": args.device,
        "force": True,
        "skip": () if args.with_absorption else ("absorption",),
    }

    def together():
        compare([str(p) for p in paths], out=work / "compare", **options)

    def separately():
        for path in paths:
            evaluate(path, out=work / "separate" / path.name, **options)  # its result folder and reports

    model = saehealth.load_model(saehealth.BUILTIN_MODEL, device=args.device)
    saes = [load_sae(p, device=args.device) for p in paths]
    site = splice_site(HOOK)
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    batches = list(sequence_batches(dataset, model.tokenizer, 128, -(-args.tokens // 128), args.batch_size, 42))

    def pass_together():
        score_batches(model, [(site, sae) for sae in saes], batches, device=args.device)

    def pass_separately():
        for sae in saes:
            score_batches(model, [(site, sae)], batches, device=args.device)

    runs = {
        "compare": together,
        "separate_evals": separately,
        "pass_shared": pass_together,
        "pass_separate": pass_separately,
    }
    if args.cli:
        common = [
            "--tokens",
            str(args.tokens),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--force",
            "--quiet",
        ] + ([] if args.with_absorption else ["--skip", "absorption"])
        exe = ["env", f"OMP_NUM_THREADS={args.threads}", sys.executable, "-m", "saehealth"]

        def cli_compare():
            cmd = [*exe, "compare", *map(str, paths), "--out", str(work / "cli_compare"), *common]
            subprocess.run(cmd, check=True, capture_output=True)

        def cli_separate():
            for path in paths:
                cmd = [*exe, "eval", "--sae-path", str(path), "--out", str(work / "cli" / path.name), *common]
                subprocess.run(cmd, check=True, capture_output=True)

        runs.update(cli_compare=cli_compare, cli_separate_evals=cli_separate)

    for fn in runs.values():  # warm-up: imports, caches, first-call allocations
        fn()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            w, c = timed(fn, children=name.startswith("cli_"))
            wall[name].append(w)
            cpu[name].append(c)
    med = {name: statistics.median(values) for name, values in wall.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    tokens = sum(b.numel() for b in batches)

    def ratios(m: dict) -> dict:
        out = {
            "compare_vs_separate_evals": round(m["compare"] / m["separate_evals"], 3),
            "shared_pass_vs_separate_passes": round(m["pass_shared"] / m["pass_separate"], 3),
        }
        if args.cli:
            out["cli_compare_vs_separate_evals"] = round(m["cli_compare"] / m["cli_separate_evals"], 3)
        return out

    report = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "saes": [p.name for p in paths],
        "hook": HOOK,
        "tokens": tokens,
        "batch_size": args.batch_size,
        "absorption": args.with_absorption,
        "repeats": args.repeats,
        "median_wall_s": {k: round(v, 3) for k, v in med.items()},
        "median_cpu_s": {k: round(v, 3) for k, v in med_cpu.items()},
        "ratios_wall": ratios(med),
        "ratios_cpu": ratios(med_cpu),
        "all_wall_s": {k: [round(x, 2) for x in v] for k, v in wall.items()},
        "all_cpu_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
