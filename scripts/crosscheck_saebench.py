#!/usr/bin/env python
"""Run the real SAEBench 0.6 absorption eval and saehealth's on one SAE and the built-in model, side by side.

    python scripts/crosscheck_saebench.py --sae-path CKPT [--seeds 1,2,3,4,5] [--min-letters 10] [--threads 1]
                                          [--saebench-results FILE.json]

SAEBench pins numpy < 2 and datasets < 4, so it runs in its own virtualenv, built once and cached under
$SAEHEALTH_CACHE/saebench-venv (default ~/.cache/saehealth/saebench-venv) with `torch==2.13.0` (the
local CPU wheel, pinned so torchvision cannot pull a CUDA build) and `sae-bench==0.6.0`. For each seed
the script seeds Python's and torch's generators (SAEBench's own `random_seed` is never read), deletes
SAEBench's probe cache, points `HookedTransformer.from_pretrained_no_processing` at saehealth's built-in
model, lowers `min_feats_for_eval` to --min-letters (said in the output), and runs `run_eval` on the SAE.
It then feeds SAEBench's own word split to saehealth's `saebench-0.6` schedule (one split) and runs
saehealth's default measurement cold (5 word splits of its own, both estimators: `converged` and
`saebench-0.6`), and prints per-letter and mean numbers, paired differences and wall times, with the
ratio of SAEBench's time to saehealth's cold time per seed (one process each, same thread count).
With --saebench-results, SAEBench's per-seed results (values, split and times) are kept in that file and seeds
already in it are not rerun: SAEBench's side is slow and independent of saehealth's code, so its values can be
gathered once and saehealth's side rerun as the code changes (the times in the file are those of the run that
made them; delete the file for fresh timings).
Not a test: it takes minutes and builds a 1 GB virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"  # the local CPU wheel; pinned so that nothing pulls a CUDA build
CHILD = r"""
import json, os, random, shutil, sys, time
import torch
sys.path.insert(0, os.environ["SAEHEALTH_REPO"])
from saehealth.builtin import assets_dir, load_builtin_tokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig
import sae_bench.evals.absorption.common as common
import sae_bench.evals.absorption.main as absorption
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_lens import SAE
from safetensors.torch import load_file

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
cfg = json.loads((assets_dir() / "model_config.json").read_text())
model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=load_builtin_tokenizer())
model.load_state_dict(load_file(str(assets_dir() / "model.safetensors")), strict=False)
model.eval()
HookedTransformer.from_pretrained_no_processing = classmethod(lambda cls, *a, **k: model)
sae = SAE.load_from_disk(args["sae_path"], device="cpu")
out = {}
for seed in args["seeds"]:
    random.seed(seed); torch.manual_seed(seed)
    shutil.rmtree(common.PROBES_DIR, ignore_errors=True)
    shutil.rmtree(common.RESULTS_DIR, ignore_errors=True)
    config = AbsorptionEvalConfig(model_name=cfg.get("model_name", "tiny"), random_seed=seed, llm_batch_size=64,
                                  llm_dtype="float32", min_feats_for_eval=args["min_letters"])
    started, cpu = time.perf_counter(), time.process_time()
    results = absorption.run_eval(config, [("crosscheck", sae)], "cpu", args["out"], force_rerun=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    probe_dir = common.PROBES_DIR / model.cfg.model_name / f"layer_{int(sae.cfg.metadata.hook_name.split('.')[1])}"
    import pandas as pd
    split = {name: pd.read_csv(probe_dir / f"{name}_df.csv", keep_default_na=False, na_values=[""])["token"].tolist()
             for name in ("train", "test")}
    result = next(iter(results.values()), None)
    out[seed] = {"seconds": seconds, "cpu_seconds": cpu, "split": split, "result": result}
print("CROSSCHECK_JSON" + json.dumps(out, default=str))
"""


def thread_env(threads: int) -> dict[str, str]:
    """Environment that holds numpy's, scikit-learn's and the tokenizers' own thread pools to `threads` as well:
    torch.set_num_threads alone left SAEBench's process using about 1.4 cores at --threads 1."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {name: str(threads) for name in names} | {"TOKENIZERS_PARALLELISM": "false"}


def cache_root() -> Path:
    return Path(os.environ.get("SAEHEALTH_CACHE", Path.home() / ".cache" / "saehealth"))


def saebench_python() -> Path:
    """The SAEBench virtualenv's python, built on first use."""
    venv = cache_root() / "saebench-venv"
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    if venv.exists():
        shutil.rmtree(venv)  # a half-built one from an interrupted run
    print(f"Building the SAEBench virtualenv in {venv} (once; several minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pin = venv / "torch-pin.txt"
    pin.write_text(f"torch=={TORCH}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={TORCH}"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(pin), "sae-bench==0.6.0"], check=True)
    # The torchvision that resolves is built against another torch build (its C++ ops fail to register
    # and transformers then fails to import); the absorption eval never uses it, so it goes.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=True)
    check = "import sae_bench.evals.absorption.main, transformers; transformers.BertForPreTraining; print('ok')"
    probe = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    if probe.stdout.strip() != "ok":
        sys.exit(f"The SAEBench virtualenv in {venv} does not import SAEBench:\n{probe.stderr[-2000:]}")
    (venv / ".complete").write_text(f"sae-bench==0.6.0 torch=={TORCH}\n")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae-path", required=True)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--min-letters", type=int, default=10, help="SAEBench's min_feats_for_eval (default 20)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--saebench-results", type=Path, help="keep SAEBench's per-seed results here and reuse them")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.update(thread_env(args.threads))  # before numpy loads: both sides on the same thread count

    kept = (
        json.loads(args.saebench_results.read_text())
        if args.saebench_results and args.saebench_results.exists()
        else {}
    )
    print(f"SAEBench min_feats_for_eval lowered from 20 to {args.min_letters} for the built-in model.", flush=True)
    missing = [seed for seed in seeds if str(seed) not in kept]
    if missing:
        kept |= run_saebench(args, missing)
        if args.saebench_results:
            args.saebench_results.write_text(json.dumps(kept))
    else:
        print(f"SAEBench's results for seeds {args.seeds} reused from {args.saebench_results}.", flush=True)
    compare(args, seeds, kept)


def run_saebench(args, seeds: list[int]) -> dict:
    """SAEBench's absorption eval for each seed, in its own virtualenv: {seed: {seconds, cpu_seconds, split, result}}."""
    python = saebench_python()
    with tempfile.TemporaryDirectory() as work:
        payload = {"sae_path": str(Path(args.sae_path).resolve()), "seeds": seeds, "out": work}
        payload |= {"min_letters": args.min_letters, "threads": args.threads}
        env = {**os.environ, "SAEHEALTH_REPO": str(REPO), "HF_HUB_OFFLINE": "1"}  # thread_env set in main()
        run = subprocess.run(
            [str(python), "-c", CHILD, json.dumps(payload)], cwd=work, env=env, capture_output=True, text=True
        )
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("CROSSCHECK_JSON")), None)
    if line is None:
        sys.exit(f"SAEBench failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(line[len("CROSSCHECK_JSON") :])


def compare(args, seeds, saebench: dict) -> None:
    import numpy as np
    import torch

    import saehealth
    from saehealth.absorption import AbsorptionSettings, measure_absorption
    from saehealth.absorption.words import LETTERS, saebench_vocab

    torch.set_num_threads(args.threads)
    settings = {"min_letters": args.min_letters}  # the 5-split default, both schedules
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    sae = saehealth.load_sae(args.sae_path)
    hook = sae.cfg.metadata.hook_name
    index = {text: i for i, (_, text) in enumerate(saebench_vocab(model.tokenizer))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            sb = saebench[str(seed)]
            split = [
                (np.array(sorted(index[w] for w in sb["split"][name] if w in index))) for name in ("train", "test")
            ]
            started = time.perf_counter()
            ours_sb = measure_absorption(
                model,
                sae,
                hook,
                seed=seed,
                settings=AbsorptionSettings(schedule="saebench-0.6", n_splits=1, min_letters=args.min_letters),
                splits=[tuple(split)],
            )
            sb_seconds = time.perf_counter() - started
            cold, cold_cpu = time.perf_counter(), time.process_time()
            ours = measure_absorption(
                model, sae, hook, seed=seed, cache_dir=Path(tmp) / str(seed), settings=AbsorptionSettings(**settings)
            )
            cold, cold_cpu = time.perf_counter() - cold, time.process_time() - cold_cpu
            print(
                f"seed {seed} CPU seconds: SAEBench {sb['cpu_seconds']:.1f}, saehealth cold {cold_cpu:.1f} "
                f"({sb['cpu_seconds'] / cold_cpu:.1f}x; on a busy machine CPU time is the fairer comparison)"
            )
            sb_metrics = (sb["result"] or {}).get("eval_result_metrics", {}).get("mean", {})
            details = {d["first_letter"].upper(): d for d in (sb["result"] or {}).get("eval_result_details", [])}
            print(
                f"\nseed {seed}: SAEBench {sb['seconds']:.1f}s, saehealth saebench-0.6 on SAEBench's split "
                f"{sb_seconds:.1f}s, saehealth cold (5 splits, both schedules) {cold:.1f}s"
            )
            print("letter  SAEBench  saehealth(saebench-0.6, its split)  saehealth(converged)  saehealth(saebench-0.6)")
            for i, letter in enumerate(LETTERS):
                theirs = details.get(letter, {}).get("mean_absorption_fraction")
                a, b = ours_sb.per_letter["absorption_fraction"][i], ours.per_letter["absorption_fraction"][i]
                c = ours.per_letter["saebench_absorption_fraction"][i]
                print(
                    f"  {letter}     {_f(theirs)}     {_f(a)}                             {_f(b)}                 {_f(c)}"
                )
            rows.append(
                (
                    seed,
                    sb_metrics.get("mean_absorption_fraction_score"),
                    ours_sb.metrics["absorption_fraction"],
                    ours.metrics["absorption_fraction"],
                    ours.uncertainty.get("absorption_fraction"),
                    ours.metrics["absorption_fraction_saebench"],
                    ours.uncertainty.get("absorption_fraction_saebench"),
                    sb["seconds"],
                    cold,
                )
            )
    print(
        "\nseed  SAEBench  saebench-0.6 (SAEBench's split)  converged ± se (5 splits)  saebench-0.6 ± se (5 splits)"
        "  SAEBench s  saehealth cold s  ratio"
    )
    for seed, theirs, a, b, se_b, c, se_c, s1, s2 in rows:
        print(
            f"{seed:4d}  {_f(theirs)}    {_f(a)}                          {_f(b)} ± {_f(se_b)}            "
            f"{_f(c)} ± {_f(se_c)}               {s1:6.1f}      {s2:6.1f}       {s1 / s2:4.1f}x"
        )
    if len(rows) >= 2:
        summarise(rows)


def summarise(rows: list[tuple]) -> None:
    """Means and standard deviations over seeds, paired differences against SAEBench, and the time ratio."""
    import numpy as np

    columns = list(zip(*rows, strict=True))
    print("\nover seeds, mean ± standard deviation:")
    named = (("SAEBench", 1), ("saebench-0.6, SAEBench's split", 2), ("converged, 5 splits", 3))
    for name, i in (*named, ("saebench-0.6, 5 splits", 5)):
        kept = np.array([v for v in columns[i] if v is not None], dtype=float)
        print(f"  {name:<31} {kept.mean():.3f} ± {kept.std(ddof=1):.3f}  ({len(kept)} seeds)")
    print("paired differences from SAEBench, mean ± standard error over seeds:")
    for name, i in (*named[1:], ("saebench-0.6, 5 splits", 5)):
        pairs = [(v, t) for v, t in zip(columns[i], columns[1], strict=True) if v is not None and t is not None]
        diff = np.array([v - t for v, t in pairs], dtype=float)
        below = sum(d < 0 for d in diff)
        print(
            f"  {name:<31} {diff.mean():+.3f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.3f}  "
            f"({below} of {len(diff)} seeds below SAEBench)"
        )
    ratio = np.array(columns[7], dtype=float) / np.array(columns[8], dtype=float)
    print(
        f"  wall time     SAEBench {np.mean(columns[7]):.1f} s, saehealth cold {np.mean(columns[8]):.1f} s; "
        f"SAEBench / saehealth per seed: median {np.median(ratio):.1f}x (min {ratio.min():.1f}x)"
    )


def _f(value) -> str:
    return "  -  " if value is None or value != value else f"{value:.3f}"


if __name__ == "__main__":
    main()
