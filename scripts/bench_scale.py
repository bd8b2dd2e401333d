#!/usr/bin/env python
"""Benchmark at realistic shapes: a randomly initialised 12-layer GPT-2-style model, SAEs at every layer, and
widths up to 131,072 latents.

    python scripts/bench_scale.py [--width 256] [--tokens 8192] [--device auto] [--repeats 3] [--quick]
    python scripts/bench_scale.py --width 768 --device cuda        # GPT-2 small's shape, on a GPU

The model is a `transformers` GPT2Config checkpoint saved with `save_pretrained` into a temporary folder (the
built-in tokenizer's vocabulary, context 128, `--width` wide, 12 layers) and loaded through saehealth's local
Hugging Face folder path. The SAEs are randomly initialised SAELens TopK SAEs. Printed as JSON, in one run:

1. `one_sae`: one SAE (32× wide, k 32) at blocks.6.hook_resid_post. saehealth's pass and SAELens `run_evals`
   (everything on) on the same token batches, alternating, medians of `--repeats`: throughput ratio, and the
   pass's time over that of 3 plain forward passes.
2. `every_layer`: 12 SAEs (8× wide, k 32), one per layer's resid_post, in one run folder. `saehealth eval` of the
   folder (one pass, every SAE finished and its result folder and reports written) against 12 separate
   evaluations of one SAE each (the issue's target: ≤ 0.4× the time), in-process and as commands end to end
   (12 `saehealth eval` subprocesses against one); and the pass alone against 12 passes of one SAE each over
   the same batches (what `compare` did before one pass took every hook). Absorption skipped (the random
   model cannot spell). Each is timed once: the separate evaluations are long.
3. `widths`: d_sae 4,096 → 65,536 at blocks.6.hook_resid_post, each in a fresh process: the pass's time, decoder
   geometry's time, the resident memory before the pass and the peak while loading the model and the SAE, then
   the peak during the pass and during geometry (Linux: the peak is reset before each; elsewhere the process's
   peak); d_sae 131,072 for peak memory of the pass (its geometry is
   65,536's four times over). On a GPU, peak GPU memory too.

4. `builtin_memory`: the issue-18 target. A whole `evaluate()` (the pass, geometry, latent examples, reports and
   the result folder; absorption skipped) of a TopK SAE on the built-in model, 20,000 tokens, at 4,096 and 65,536
   latents, each in a fresh process: its peak resident memory (Linux VmHWM, reset after imports) and the ratio
   65,536 / 4,096 (target ≤ 1.6). Run it alone with `--only builtin_memory` (about 10 minutes on 2 busy cores,
   most of it the 65,536-latent pass).

Defaults finish in under 10 minutes on 2 CPU cores (`builtin_memory` adds its own); `--quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import resource
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
from saehealth import builtin  # noqa: E402
from saehealth.compare import evaluate_path  # noqa: E402
from saehealth.config import EvalConfig, resolve_device  # noqa: E402
from saehealth.crosscheck import saelens_run_evals  # noqa: E402
from saehealth.data import load_dataset, sequence_batches  # noqa: E402
from saehealth.loading import load_sae  # noqa: E402
from saehealth.metrics.geometry import geometry_metrics  # noqa: E402
from saehealth.replay import splice_site  # noqa: E402
from saehealth.sae_scorer import chunk_tokens  # noqa: E402
from saehealth.scoring import score_batches  # noqa: E402

LAYERS = 12
CONTEXT = 128
HOOK = "blocks.6.hook_resid_post"
WIDTHS = (4096, 16384, 65536)
MEMORY_ONLY_WIDTH = 131072


def build_model(folder: Path, width: int, layers: int = LAYERS) -> Path:
    """A random GPT-2-style Hugging Face checkpoint with the built-in tokenizer's vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = builtin.load_builtin_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=CONTEXT,
        n_ctx=CONTEXT,  # TransformerLens reads it; transformers 5 no longer sets it
        n_embd=width,
        n_layer=layers,
        n_head=max(1, width // 64),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def topk_sae(folder: Path, model: Path, hook: str, d_in: int, d_sae: int, k: int = 32, seed: int = 0) -> Path:
    """A randomly initialised SAELens TopK SAE saved to `folder`, recording the model and hook."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    cfg.metadata.model_name = str(model)
    cfg.metadata.hook_name = hook
    cfg.metadata.context_size = CONTEXT
    TopKSAE(cfg).save_model(folder)
    return folder


def batches_of(model, n_tokens: int, batch_size: int, device: str) -> list[torch.Tensor]:
    """The built-in corpus's train split (475k tokens) cut into sequences of CONTEXT: speed only."""
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "train")
    found = sequence_batches(dataset, model.tokenizer, CONTEXT, max(1, n_tokens // CONTEXT), batch_size, 0)
    return [b.to(device) for b in found]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_sae(args, model_dir: Path, work: Path) -> dict:
    model = saehealth.load_model(str(model_dir), device=args.device)
    sae = load_sae(topk_sae(work / "one", model_dir, HOOK, args.width, 32 * args.width), device=args.device)
    batches = batches_of(model, args.tokens, args.batch_size, args.device)
    site = splice_site(HOOK)

    def three_forwards():
        for _ in range(3):
            for batch in batches:
                model(batch)

    runs = {
        "saehealth": lambda: score_batches(model, [(site, sae)], batches, device=args.device),
        "saelens": lambda: saelens_run_evals(model, sae, batches),
        "forward_x3": three_forwards,
    }
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    med = {name: statistics.median(values) for name, values in times.items()}
    tokens = sum(b.numel() for b in batches)
    return {
        "hook": HOOK,
        "d_sae": 32 * args.width,
        "tokens": tokens,
        "saehealth_tokens_per_s": tokens / med["saehealth"],
        "saelens_tokens_per_s": tokens / med["saelens"],
        "speedup_vs_saelens": med["saelens"] / med["saehealth"],
        "time_vs_3_forward_passes": med["saehealth"] / med["forward_x3"],
        "median_seconds": med,
    }


def every_layer(args, model_dir: Path, work: Path) -> dict:
    run = work / "run"
    for layer in range(LAYERS):
        hook = f"blocks.{layer}.hook_resid_post"
        topk_sae(run / f"layers.{layer}", model_dir, hook, args.width, 8 * args.width, seed=layer)
    options = {"n_tokens": args.tokens, "skip": ("absorption",), "force": True, "device": args.device}
    options.update(dataset=saehealth.BUILTIN_DATASET, split="train")

    def one_pass():
        evaluate_path(EvalConfig(sae_path=str(run), out=work / "together", **options))

    def separately():  # as 12 `saehealth eval` calls: each writes its result folder and reports, as the run does
        for member in sorted(run.iterdir()):
            evaluate_path(EvalConfig(sae_path=str(member), out=work / "separate" / member.name, **options))

    def command(sae_path: Path, out: Path) -> list[str]:
        return [sys.executable, "-m", "saehealth", "eval", "--sae-path", str(sae_path), "--out", str(out), "--quiet"]

    flags = ["--tokens", str(args.tokens), "--skip", "absorption", "--force", "--device", args.device]
    flags += ["--dataset", saehealth.BUILTIN_DATASET, "--split", "train"]

    def cli_one_pass():  # end to end on the command line: interpreter start, imports and model load once
        subprocess.run([*command(run, work / "cli_together"), *flags], check=True, capture_output=True)

    def cli_separately():  # ... and twelve times
        for member in sorted(run.iterdir()):
            out = work / "cli_separate" / member.name
            subprocess.run([*command(member, out), *flags], check=True, capture_output=True)

    model = saehealth.load_model(str(model_dir), device=args.device)
    members = [
        (splice_site(f"blocks.{i}.hook_resid_post"), load_sae(run / f"layers.{i}", device=args.device))
        for i in range(LAYERS)
    ]
    batches = batches_of(model, args.tokens, args.batch_size, args.device)

    def pass_together():
        score_batches(model, members, batches, device=args.device)

    def pass_per_hook():
        for member in members:
            score_batches(model, [member], batches, device=args.device)

    runs = {"eval_run_folder": one_pass, "separate_evals": separately, "pass_shared": pass_together}
    runs.update(pass_per_hook=pass_per_hook, cli_run_folder=cli_one_pass, cli_separate_evals=cli_separately)
    times = {name: timed(run_) for name, run_ in runs.items()}  # once each: the separate evals are long
    return {
        "saes": LAYERS,
        "d_sae": 8 * args.width,
        "tokens": sum(b.numel() for b in batches),
        "seconds": times,
        "run_folder_vs_separate_evals": times["eval_run_folder"] / times["separate_evals"],
        "cli_run_folder_vs_separate_evals": times["cli_run_folder"] / times["cli_separate_evals"],
        "shared_pass_vs_pass_per_hook": times["pass_shared"] / times["pass_per_hook"],
    }


def width_child(args) -> None:
    """One width in a fresh process: pass time, geometry time, peak memory (printed as one JSON line)."""
    work = Path(tempfile.mkdtemp())
    model_dir = Path(args.model_dir)
    model = saehealth.load_model(str(model_dir), device=args.device)
    d_sae = args.width_child
    sae = load_sae(topk_sae(work / "sae", model_dir, HOOK, model.cfg.d_model, d_sae), device=args.device)
    batches = batches_of(model, args.tokens, args.batch_size, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    row = {"d_sae": d_sae, "weights_mib": 2 * d_sae * model.cfg.d_model * 4 / 2**20}
    row["rss_before_pass_mib"] = _rss_mib("VmRSS")
    row["peak_rss_loading_mib"] = _rss_mib("VmHWM")
    resettable = _reset_peak_rss()  # the process's peak so far is the model's loading, not the pass
    row["pass_s"] = timed(lambda: score_batches(model, [(splice_site(HOOK), sae)], batches, device=args.device))
    if resettable:
        row["pass_peak_rss_mib"] = _rss_mib("VmHWM")
    if not args.no_geometry:
        _reset_peak_rss()
        row["geometry_s"] = timed(lambda: geometry_metrics(sae.W_dec, block_rows=chunk_tokens(d_sae, args.device)))
        if resettable:
            row["geometry_peak_rss_mib"] = _rss_mib("VmHWM")
    if not resettable:  # the process's peak, whatever set it
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(row))


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident size (Linux: VmHWM), so a later reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mib(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak since start or the last reset) from /proc/self/status, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


BUILTIN_WIDTHS = (4096, 65536)
BUILTIN_TOKENS = 20_000


def builtin_child(args) -> None:
    """One whole evaluation on the built-in model in this fresh process: peak memory (printed as one JSON line)."""
    from saehealth.evaluation import evaluate
    from saehealth.metrics.latents import state_bytes

    sae_dir, d_sae = Path(args.sae_dir), args.builtin_child
    out = Path(tempfile.mkdtemp()) / "out"
    resettable = _reset_peak_rss()  # imports are the same at every width: the peak that follows is the evaluation's
    started = time.perf_counter()
    evaluate(str(sae_dir), n_tokens=BUILTIN_TOKENS, skip=("absorption",), out=out, device=args.device)
    row = {"d_sae": d_sae, "seconds": time.perf_counter() - started}
    row["peak_rss_mib"] = _rss_mib("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["peak_covers"] = "the evaluation (reset after imports)" if resettable else "the whole process"
    row["latent_example_state_mib"] = state_bytes(d_sae) / 2**20
    print(json.dumps(row))


def builtin_memory(args, work: Path) -> dict:
    """Peak memory of evaluating a TopK SAE on the built-in model at 4,096 and 65,536 latents, and their ratio."""
    rows = []
    for d_sae in BUILTIN_WIDTHS:
        sae_dir = topk_sae(work / f"builtin_{d_sae}", saehealth.BUILTIN_MODEL, "blocks.1.hook_resid_post", 128, d_sae)
        command = [sys.executable, __file__, "--builtin-child", str(d_sae), "--sae-dir", str(sae_dir)]
        done = subprocess.run([*command, "--device", args.device], check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "tokens": BUILTIN_TOKENS,
        "widths": rows,
        "peak_ratio_65536_over_4096": rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"],
        "target": "<= 1.6",
    }


def widths(args, model_dir: Path) -> list[dict]:
    rows = []
    sizes = [(w, False) for w in args.widths] + ([(MEMORY_ONLY_WIDTH, True)] if not args.quick else [])
    for d_sae, memory_only in sizes:
        command = [sys.executable, __file__, "--width-child", str(d_sae), "--model-dir", str(model_dir)]
        command += ["--device", args.device, "--tokens", str(args.tokens), "--batch-size", str(args.batch_size)]
        if memory_only:
            command.append("--no-geometry")
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256, help="d_model of the model (768: GPT-2 small's shape)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,048 tokens, widths to 16,384, 1 repeat")
    parser.add_argument("--only", choices=("one_sae", "every_layer", "widths", "builtin_memory"), help="run one part")
    parser.add_argument("--width-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--no-geometry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--builtin-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sae-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    args.widths = WIDTHS[:2] if args.quick else WIDTHS
    if args.quick:
        args.tokens, args.repeats = 2048, 1
    torch.set_grad_enabled(False)
    if args.width_child:
        width_child(args)
        return
    if args.builtin_child:
        builtin_child(args)
        return
    work = Path(tempfile.mkdtemp(prefix="saehealth-bench-scale-"))
    model_dir = build_model(work / "model", args.width) if args.only != "builtin_memory" else None
    started = time.perf_counter()
    report = {"device": args.device}
    if model_dir is not None:
        report["model"] = f"GPT-2 style, {LAYERS} layers, d_model {args.width}, context {CONTEXT}"
    parts = {
        "one_sae": lambda: one_sae(args, model_dir, work),
        "every_layer": lambda: every_layer(args, model_dir, work),
    }
    parts["widths"] = lambda: widths(args, model_dir)
    parts["builtin_memory"] = lambda: builtin_memory(args, work)
    for name, part in parts.items():
        if args.only in (None, name):
            report[name] = part()
            print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)  # progress while it runs
    report["total_s"] = time.perf_counter() - started
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
