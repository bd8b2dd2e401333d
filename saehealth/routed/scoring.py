"""A routed SAE's evaluation: its pass (the shared pass of `scoring.score_batches`, with the routed SAE as one of
its members: `member.py`), the plan's site, and what its result adds (the routing section, the notes, the metrics
not measured with soft routing).

Alone (`saehealth eval`) or beside other SAEs of the model (`saehealth compare`, run folders), the same code scores
it: the clean forward is shared, the rest of its pass is its own, so its numbers do not depend on its company.
Under torchrun each rank passes its own shard and rank 0 gets the merged outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import torch

from saehealth.routed.passes import RoutedSite, RouteOverride
from saehealth.sae_scorer import PassOutput
from saehealth.scoring import score_batches


@torch.no_grad()
def score_routed(
    model,
    site: RoutedSite,
    sae,
    batches: Iterable[torch.Tensor],
    include_special_tokens: bool = False,
    device: str = "cpu",
    advance: Callable[[int], None] | None = None,
    reference: torch.Tensor | None = None,
    examples: int = 0,
    override: RouteOverride | None = None,
) -> tuple[PassOutput, dict] | None:
    """(the pass's output, the routing statistics) of one routed SAE scored alone; None on torchrun ranks other
    than 0.

    `reference` is the evaluation's first sequence (1, ctx), the same on every rank: the reconstruction
    accumulator's reference mean is taken from its routed inputs. `override` forces routes (tests, diagnostics).
    """
    if override is not None:
        site = replace(site, override=override)
    outputs = score_batches(model, [(site, sae)], batches, include_special_tokens, device, advance, reference, examples)
    if outputs is None:
        return None
    return outputs[0], outputs[0].routing


def routed_plan_site(loaded, model):
    """(the routed site, the hook label "H_0,H_1,…", the splice site of the first routed hook) for a `Plan`.

    The first hook's site stands for the SAE where one site is needed (the logit lens reads the decoder rows
    from there)."""
    from saehealth.replay import splice_site
    from saehealth.routed.passes import resolve_site

    site = resolve_site(loaded.route, model, loaded.d_in)
    return site, site.label, splice_site(site.hooks[0])


def score_routed_plan(
    plan, batches, config, advance, reference, notes: list[str], not_measured: dict
) -> PassOutput | None:
    """`Evaluation.score` for a routed SAE alone: the pass, then `routed_output`."""
    scored = score_routed(
        plan.model, plan.route, plan.sae, batches, config.include_special_tokens, config.device, advance,
        reference, config.examples,
    )  # fmt: skip
    if scored is None:
        return None
    return routed_output(plan, scored[0], notes, not_measured)


def routed_output(plan, output: PassOutput, notes: list[str], not_measured: dict) -> PassOutput:
    """A routed SAE's pass output made a result's: its routing section (from the raw statistics the pass left in
    `output.routing`), and the notes and reasons it adds (soft routing: the downstream metrics are not measured)."""
    from saehealth.result import DOWNSTREAM_KEYS
    from saehealth.routed.checks import LOSS_RECOVERED_BASELINE, SOFT_DOWNSTREAM, routing_section

    output.routing = routing_section(plan.route, output.routing)
    spec = plan.route.spec
    if spec.routing == "soft":
        not_measured.update(dict.fromkeys(DOWNSTREAM_KEYS, SOFT_DOWNSTREAM))
        for key in DOWNSTREAM_KEYS:
            output.metrics[key] = None
    else:
        notes.append(LOSS_RECOVERED_BASELINE[0].upper() + LOSS_RECOVERED_BASELINE[1:] + ".")
        notes.append(
            f"Routed splice mode {spec.splice_mode!r}: "
            + (
                "each routed token's live activation a becomes denorm(SAE(LN(a))), as the authors' evaluation does"
                if spec.splice_mode == "official"
                else "each routed token's live activation a becomes denorm(SAE(p·LN(a))/p), p its router probability, "
                "as the SAE was trained"
            )
            + " (LN: the checkpoint's per-token normalisation, the identity when it has none); the routes are the "
            "clean pass's."
        )
    notes.append(
        "Reconstruction metrics are on the routed input y (p·x̃ at the chosen layer, p its router probability, x̃ the residual, "
        "normalised when the checkpoint says so; soft routing: Σ p_j x̃_j), the SAE's training target; per-layer "
        "figures are in the routing section."
    )
    return output


def check_routed_options(config) -> None:
    """Refuse, in one line, the options a routed SAE does not support yet."""
    from saehealth.errors import ConfigError

    if config.activations is not None:
        raise ConfigError(
            "--activations scores one hook's cached activations; a routed SAE reads several layers per token: "
            "drop --activations to replay the model."
        )
    if config.saebench_out is not None:
        raise ConfigError("SAEBench files describe single-hook SAEs: drop --saebench-out for a routed SAE.")
    if config.layer is not None:
        raise ConfigError("--layer moves a single-hook SAE: give a routed SAE's hooks with --hook H0,H1,...")
