"""SAEBench 0.6's probe schedule (`probing.py` `_run_probe_training`), and the product helpers both schedules use.

nn.Linear's initialisation, Adam with L2 weight decay (torch's `Adam(weight_decay=...)`), the learning rate
decayed exponentially per epoch from `lr` to `end_lr`, shuffled mini-batches; the loss is SAEBench's: the
pos-weighted BCE summed over the batch and averaged over all 26 letters, plus the L1 term over 26.

The gradient and Adam's update are written out: on the letter probes (2,250 steps of batch 64 on the demo
SAE's words) autograd's bookkeeping cost three times the arithmetic (2.1 s of CPU per split against 0.7 s).
The update is torch's `Adam` step, operation for operation. Latents (the L1 probe) are trained dense up to
DENSE_LIMIT values: on the demo SAE (2,862 words x 1,024 latents, 6% non-zero) a sparse product and its
autograd backward took 13 s of wall time per split on busy cores, most of the saebench-0.6 estimator's
cost; wider SAEs keep sparse inputs and autograd. Where a mini-batch is every word (the L1 probe's 4,096) and
few latents fire, its two products run on CSR copies instead (`_whole_batch_products`): MKL's sparse products
without autograd, a fraction of the dense ones' cost.
"""

from __future__ import annotations

import math

import torch

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which SAEBench uses
DENSE_LIMIT = 2**24  # values (64 MB of float32): sparse inputs up to this size are trained dense


def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w for dense or sparse (COO/CSR) x."""
    return torch.sparse.mm(x, w) if x.is_sparse or x.layout == torch.sparse_csr else x @ w


def transpose(x: torch.Tensor) -> torch.Tensor:
    """x.T, as CSR when x is sparse."""
    if x.is_sparse or x.layout == torch.sparse_csr:
        return x.to_sparse_coo().t().coalesce().to_sparse_csr()
    return x.T


def bce_terms(z: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (word, probe): pos-weighted BCE and its derivative in the logit (torch's BCEWithLogits)."""
    log_sig = torch.nn.functional.logsigmoid(z)
    log_one_minus = torch.nn.functional.logsigmoid(-z)
    loss = -(pos_weight * y * log_sig + (1 - y) * log_one_minus)
    sig = torch.sigmoid(z)
    dz = pos_weight * y * (sig - 1) + (1 - y) * sig
    return loss, dz


def train_adam(x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor, objective, *, seed: int):
    """(weight (P, d), bias (P,), steps, data gradient (P, d)) of SAEBench's schedule for probes of `objective`
    (a probes.ProbeObjective) on inputs x (n, d) dense or sparse and labels y (n, P) as floats."""
    n, d = x.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weight, bias = _linear_init(y.shape[1], d, gen, x.device)
    whole = None  # CSR copies for the dense path's whole-batch products (large sparse x trains on autograd instead)
    if (x.is_sparse or x.layout == torch.sparse_csr) and x.shape[0] * x.shape[1] <= DENSE_LIMIT:
        whole = _whole_batch_products(x, objective)
        x = x.to_dense()  # SAEBench's probes read dense latents; sparse products cost 10x here
    x32 = x.float().coalesce() if x.is_sparse else (x.to_sparse_coo().float() if x.layout == torch.sparse_csr else x)
    x32 = x32.float()
    y32, pw = y.float(), pos_weight.float()
    if x32.is_sparse:
        weight, bias, steps = _autograd_adam(x32, y32, pw, weight, bias, objective, gen)
    else:
        weight, bias, steps = _dense_adam(x32, y32, pw, weight, bias, objective, gen, whole)
    return weight, bias, steps, _data_gradient(x32, y32, pw, weight, bias)


SPARSE_PRODUCTS_BELOW = 0.1  # fraction of non-zero latents below which whole-batch products run on CSR


def _whole_batch_products(x: torch.Tensor, objective) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x, x') of sparse x as float32 CSR when every mini-batch is all of its rows (the L1 probe: batches of 4,096)
    and few of its values are non-zero: CSR products then cost a fraction of dense ones (demo SAE, 6% non-zero:
    0.7 ms against 3.8 and 2.1 ms per product). None otherwise."""
    if objective.batch_size < x.shape[0]:
        return None
    coo = x.to_sparse_coo().coalesce().float()
    if coo.values().numel() > SPARSE_PRODUCTS_BELOW * x.shape[0] * x.shape[1]:
        return None
    return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()


def train_adam_together(xs, ys, pos_weights, objective, *, seeds: list[int]):
    """`train_adam` on several independent dense problems of one shape (each split's letter probes) at once.

    xs: dense (n, d) each; ys (n, P) floats; pos_weights (P,); one seed each. Each problem gets what
    `train_adam` alone gives it (its own initialisation, mini-batch order and Adam state, from its own
    seed; the same arithmetic per element), but the 2,250 mini-batch steps of the letter probes run once
    for all, on stacked (problems, ...) tensors: those steps are small, so their cost is per operation.
    Returns one (weight, bias, steps, data gradient) per problem.
    """
    gens = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    device = xs[0].device
    inits = [_linear_init(y.shape[1], x.shape[1], gen, device) for x, y, gen in zip(xs, ys, gens, strict=True)]
    x = torch.stack([x.float() for x in xs])
    y = torch.stack([y.float() for y in ys])
    pw = torch.stack([p.float() for p in pos_weights])[:, None, :]
    weight = torch.stack([w for w, _ in inits])
    bias = torch.stack([b for _, b in inits])
    weight, bias, steps = _dense_adam_stacked(x, y, pw, weight, bias, objective, gens)
    return [
        (weight[i], bias[i], steps, _data_gradient(x[i], y[i], pw[i, 0], weight[i], bias[i])) for i in range(len(xs))
    ]


def _linear_init(n_probes: int, d: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default initialisation, weights and bias alike, drawn from `gen` (weights first)."""
    bound = 1 / math.sqrt(d)
    weight = ((torch.rand(n_probes, d, generator=gen) * 2 - 1) * bound).to(device)
    bias = ((torch.rand(n_probes, generator=gen) * 2 - 1) * bound).to(device)
    return weight, bias


def _data_gradient(x32, y32, pw, weight, bias) -> torch.Tensor:
    """(P, d): the gradient of the mean pos-weighted BCE in the weights at the solution."""
    with torch.no_grad():
        _, dz = bce_terms(matmul(x32, weight.T) + bias, y32, pw)
        return matmul(transpose(x32), dz).T / x32.shape[0]


def _lr_per_epoch(objective) -> list[float]:
    """ExponentialLR from lr to end_lr over the epochs, as SAEBench's scheduler steps it."""
    gamma = math.exp(math.log(objective.end_lr / objective.lr) / objective.epochs)
    return [objective.lr * gamma**epoch for epoch in range(objective.epochs)]


def _adam_update(params, grads, first, second, *, steps: int, lr: float, weight_decay: float) -> None:
    """torch.optim.Adam's step (L2 weight decay), operation for operation, in place."""
    beta1, beta2 = BETAS
    correction1 = 1 - beta1**steps
    correction2_sqrt = math.sqrt(1 - beta2**steps)
    for p, g, m, v in zip(params, grads, first, second, strict=True):
        g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / correction2_sqrt).add_(EPS)
        p.addcdiv_(m, denom, value=-lr / correction1)


def _dense_adam_stacked(x, y, pw, weight, bias, objective, gens):
    """`_dense_adam` on stacked problems: x (S, n, d), y (S, n, P), pw (S, 1, P), weight (S, P, d), bias (S, P).

    Every operation is `_dense_adam`'s with a leading problem axis (batched products, which compute each
    problem's product as `addmm` does); the sigmoid, whose vectorised and scalar code paths round
    differently, runs per problem wherever stacking would move a problem's elements across that boundary.
    """
    n_problems, n = x.shape[:2]
    params = [weight.clone(), bias.clone()]
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    scale = 1.0 / objective.n_probes
    problem = torch.arange(n_problems, device=x.device)[:, None]
    steps = 0
    for lr in _lr_per_epoch(objective):
        order = torch.stack([torch.randperm(n, generator=gen) for gen in gens]).to(x.device)
        for start in range(0, n, objective.batch_size):
            rows = order[:, start : start + objective.batch_size]
            size = rows.shape[1]
            batch, target = (x, y) if size == n else (x[problem, rows], y[problem, rows])
            w, b = params
            z = torch.baddbmm(b[:, None, :], batch, w.transpose(1, 2))
            sig = _sigmoid_per_problem(z)
            dz = (pw * target * (sig - 1) + (1 - target) * sig) * (scale / size)
            grads = [torch.bmm(dz.transpose(1, 2), batch), dz.sum(1)]
            if objective.l1:
                grads[0] += objective.l1 * scale * torch.sign(w)
            steps += 1
            _adam_update(params, grads, first, second, steps=steps, lr=lr, weight_decay=objective.weight_decay)
    return params[0], params[1], steps


VECTOR_BLOCK = 64  # floats: a multiple of every CPU vector loop's block (AVX-512 unrolled twice: 32)


def _sigmoid_per_problem(z: torch.Tensor) -> torch.Tensor:
    """sigmoid of (S, B, P) z, each problem's block rounded exactly as a lone (B, P) tensor's would be."""
    if z[0].numel() % VECTOR_BLOCK == 0:
        return torch.sigmoid(z)  # every problem starts on a vector block boundary, as it does alone
    sig = torch.empty_like(z)
    for i in range(z.shape[0]):
        torch.sigmoid(z[i], out=sig[i])
    return sig


def _dense_adam(x, y, pw, weight, bias, objective, gen, whole=None):
    """The schedule with the gradient and torch's Adam step written out (dense x; `whole`: x and x' as CSR for
    the batches of every word, `_whole_batch_products`)."""
    n = x.shape[0]
    params = [weight.clone(), bias.clone()]
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    scale = 1.0 / objective.n_probes
    steps = 0
    for lr in _lr_per_epoch(objective):
        order = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, objective.batch_size):
            rows = order[start : start + objective.batch_size]
            # A batch of every word (the L1 probe: 4,096 > 2,862 words) needs no copy: its sums do not
            # depend on the order of the rows, beyond float rounding.
            batch, target = (x, y) if len(rows) == n else (x[rows], y[rows])
            w, b = params
            sparse = whole is not None and len(rows) == n
            z = torch.sparse.mm(whole[0], w.T.contiguous()) + b if sparse else torch.addmm(b, batch, w.T)
            sig = torch.sigmoid(z)
            # d/dz of sum BCE_pw / (batch * 26): pos_weight * y * (sigmoid - 1) + (1 - y) * sigmoid.
            dz = (pw * target * (sig - 1) + (1 - target) * sig) * (scale / len(rows))
            grads = [torch.sparse.mm(whole[1], dz).T if sparse else dz.T @ batch, dz.sum(0)]
            if objective.l1:
                grads[0] += objective.l1 * scale * torch.sign(w)
            steps += 1
            _adam_update(params, grads, first, second, steps=steps, lr=lr, weight_decay=objective.weight_decay)
    return params[0], params[1], steps


def _autograd_adam(x, y, pw, weight, bias, objective, gen):
    """The schedule through torch.optim.Adam and autograd (sparse x: few, large steps)."""
    n = x.shape[0]
    weight, bias = weight.requires_grad_(), bias.requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=objective.lr, weight_decay=objective.weight_decay)
    steps = 0
    for lr in _lr_per_epoch(objective):
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, objective.batch_size):
            rows = order[start : start + objective.batch_size]
            logits = matmul(x.index_select(0, rows), weight.T) + bias
            # Averaged over all 26 letters as SAEBench's loss is, whichever letters are trained here.
            loss, _ = bce_terms(logits, y[rows], pw)
            total = loss.sum() / (len(rows) * objective.n_probes)
            if objective.l1:
                total = total + objective.l1 * weight.abs().sum() / objective.n_probes
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            steps += 1
    return weight.detach(), bias.detach(), steps
