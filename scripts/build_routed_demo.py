"""Train a small RouteSAE on the built-in model's two residual layers and save it in a routed layout, so that a
routed health report can be seen end to end without training one elsewhere.

    python scripts/build_routed_demo.py --out demo_routesae                    # the authors' layout (RouteSAEs)
    python scripts/build_routed_demo.py --out demo_routesae_seed --layout seed # the seed's layout, with its YAML
    saehealth eval --sae-path demo_routesae/sum_hard_K16_tinypydoc_train_512.pt --model saehealth/tiny-pydoc-lm \
        --hook blocks.0.hook_resid_post,blocks.1.hook_resid_post --tokens 20000

The training follows the paper (Shi et al. 2025, §2.2): the router reads the sum of the routed layers, hard
routing feeds the shared TopK SAE p*·x̃ of the chosen layer, the loss is the normalised MSE against that input,
and decoder rows are renormalised every 10 steps. The authors' layout normalises each layer per token (eps 1e-6)
and keeps negative top-k values; the seed's trains on raw residuals with a ReLU TopK. 125 s of CPU time with the
defaults (2 shared, busy CPU cores, 2026-12-07).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import saehealth
from saehealth.data import load_dataset, sequence_batches
from saehealth.routed.router import normalise, route

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def routed_activations(model, n_sequences: int, context: int, seed: int) -> torch.Tensor:
    """(tokens, L, d) residuals at the routed hooks, BOS positions dropped."""
    data = load_dataset(saehealth.BUILTIN_DATASET, "train")
    parts = []
    for tokens in sequence_batches(data, model.tokenizer, context, n_sequences, 16, seed):
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in HOOKS)
        stacked = torch.stack([cache[h] for h in HOOKS], dim=2)[:, 1:]  # drop BOS
        parts.append(stacked.reshape(-1, len(HOOKS), stacked.shape[-1]))
    return torch.cat(parts)


def train(x: torch.Tensor, d_sae: int, k: int, signed: bool, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """A router (L, d) and a TopK SAE trained on x (tokens, L, d); returns the authors' parameter names."""
    g = torch.Generator().manual_seed(seed)
    n, n_routes, d = x.shape
    router = torch.nn.Parameter(torch.randn(n_routes, d, generator=g) * 0.01)
    decoder = torch.randn(d_sae, d, generator=g)
    decoder = torch.nn.Parameter(decoder / decoder.norm(dim=-1, keepdim=True))
    encoder = torch.nn.Parameter(decoder.detach().clone())
    pre_bias = torch.nn.Parameter(torch.zeros(d))
    latent_bias = torch.nn.Parameter(torch.zeros(d_sae))
    params = [router, encoder, decoder, pre_bias, latent_bias]
    optimiser = torch.optim.Adam(params, lr=5e-4)
    for step in range(steps):
        batch = x[torch.randint(0, n, (1024,), generator=g)][:, None]  # (B, 1, L, d)
        routes = route(batch, router, "sum", "hard")
        # route() gathers p*·x̃ without a gradient path to the router through argmax; p* carries it, as in the paper
        y = routes.y.squeeze(1)
        pre = (y - pre_bias) @ encoder.T + latent_bias
        if not signed:
            pre = pre.relu()
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        y_hat = z @ decoder + pre_bias
        loss = ((y_hat - y).pow(2).mean(-1) / y.pow(2).mean(-1)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 0:
            with torch.no_grad():
                decoder /= decoder.norm(dim=-1, keepdim=True)
        if step % 100 == 0:
            print(f"step {step:4d}  normalised MSE {loss.item():.4f}")
    with torch.no_grad():
        decoder /= decoder.norm(dim=-1, keepdim=True)
    return {
        "router.weight": router.detach(),
        "sae.pre_bias": pre_bias.detach(),
        "sae.latent_bias": latent_bias.detach(),
        "sae.encoder.weight": encoder.detach(),  # (M, d), nn.Linear layout
        "sae.decoder.weight": decoder.detach().T.contiguous(),  # (d, M)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layout", choices=("routesaes", "seed"), default="routesaes")
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    with torch.no_grad():
        x = routed_activations(model, args.sequences, 128, args.seed)
        if args.layout == "routesaes":
            x = normalise(x, 1e-6)[0]  # the authors normalise every layer per token
    state = train(x, args.d_sae, args.k, args.layout == "routesaes", args.steps, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.layout == "routesaes":
        path = args.out / f"sum_hard_K{args.k}_tinypydoc_train_{args.d_sae}.pt"
        torch.save(state, path)
    else:
        import yaml

        seed_state = {("router.router.weight" if k == "router.weight" else k): v.to(torch.bfloat16)
                      for k, v in state.items()}  # fmt: skip
        path = args.out / "RouteSAE_1.pt"
        torch.save(seed_state, path)
        config = {"type": "RouteSAE", "base_sae_type": "TopKSAE", "n_layers": 2, "start_layer": 1, "end_layer": 3,
                  "hidden_size": int(x.shape[-1]), "latent_size": args.d_sae, "k": args.k, "aggre": "sum",
                  "routing": "hard", "language_model_path": saehealth.BUILTIN_MODEL}  # fmt: skip
        (args.out / "config.yaml").write_text(yaml.safe_dump({"model": config}))
    print(f"wrote {path}")
    print(f"saehealth eval --sae-path {path} --model {saehealth.BUILTIN_MODEL} --hook {','.join(HOOKS)} --tokens 20000")


if __name__ == "__main__":
    main()
