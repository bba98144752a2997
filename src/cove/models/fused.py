"""Fused training ops: fewer passes over memory and fewer tensors kept for the backward pass.

Each computes what the plain composition of torch ops computes (the same forward values in
eval and without gradients, where the callers keep using the plain ops) but saves less:

- `lm_head_loss`: the LM head and next-token cross-entropy over chunks of tokens, with the
  gradients computed chunk by chunk during the forward pass, so neither the full log-softmax
  nor its gradient ever exists (for a 49k vocabulary that is 0.4 GB per 2048 tokens each).
- `low_rank_linear`: x @ (W + sum of s * B @ A)^T + bias in one GEMM (LoRA with no dropout),
  saving only x and the thin x @ A^T; the merged weight is rebuilt in the backward pass.
- `rms_norm`: RMSNorm saving its input and the per-row reciprocal RMS only.
- `silu_gate`: silu(gate) * up saving gate and up only.
- `lean_saving` and `remade_on_save`: within a block, a tensor cheap to remake from tensors
  kept anyway (a norm's output, the gated product, merged attention heads) is saved by the
  layers that use it as a recipe, not as a copy of its values.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Tokens per chunk of the fused loss: about 8M logits (32 MB in float32) at a time.
LOSS_CHUNK_ELEMENTS = 1 << 23


class _HeadLoss(torch.autograd.Function):
    """Sum of cross-entropies of head(hidden) against labels, gradients made in forward.

    `hidden` [tokens, width]; `params` are the head's parameters that need gradients (given so
    autograd routes their gradients); the gradient of the mean loss is computed per chunk
    while the logits are at hand, and the backward pass only scales it by the incoming
    gradient (the loss is a scalar, so that is all the chain rule asks).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, chunk: int,
                lead: torch.Size, *params: torch.Tensor):
        valid = labels != -100
        count = valid.sum()
        needs_hidden = ctx.needs_input_grad[0]
        wanted = [p for p, needed in zip(params, ctx.needs_input_grad[5:], strict=True)
                  if needed]
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_params = [torch.zeros_like(p) for p in wanted]
        # float32 sum of the per-token losses; the mean divides once at the end, as
        # F.cross_entropy's mean does
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        scale = 1.0 / count.clamp(min=1).to(torch.float32)
        weight = getattr(head, "weight", None)
        plain = type(head) is nn.Linear and weight.dtype == hidden.dtype
        logits_out = hidden.new_empty((hidden.shape[0], weight.shape[0])) if plain else None
        # the plain head's gradient buffers by role: weight, bias (None when not wanted)
        accumulators = [next((g for p, g in zip(wanted, grad_params, strict=True) if p is t),
                             None) for t in (weight, getattr(head, "bias", None))]
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h, y = hidden[rows].detach(), labels[rows]
            if plain:
                loss = _linear_chunk(head, h, y, valid[rows], scale, logits_out[rows],
                                     grad_hidden, accumulators, start)
            else:
                logits, loss = _module_chunk(head, h, y, valid[rows], scale, grad_hidden,
                                             wanted, grad_params, start)
                if logits_out is None:
                    logits_out = logits.new_empty((hidden.shape[0], logits.shape[-1]))
                logits_out[rows] = logits
            if loss is not None:
                total += loss
        # as F.cross_entropy's mean: NaN when every label is ignored
        mean = total / count.to(torch.float32)
        ctx.save_for_backward(*([grad_hidden] if needs_hidden else []), *grad_params)
        ctx.needs_hidden = needs_hidden
        ctx.wanted = ctx.needs_input_grad[5:]
        logits_out = logits_out.view(*lead, logits_out.shape[-1])
        ctx.mark_non_differentiable(logits_out)
        return mean, logits_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor, _grad_logits):
        saved = list(ctx.saved_tensors)
        grad_hidden = saved.pop(0) * grad_loss if ctx.needs_hidden else None
        grads = iter(saved)
        param_grads = [next(grads) * grad_loss if needed else None for needed in ctx.wanted]
        return (grad_hidden, None, None, None, None, *param_grads)


def _linear_chunk(head: nn.Linear, h: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                  scale: torch.Tensor, out: torch.Tensor, grad_hidden: torch.Tensor | None,
                  accumulators: list[torch.Tensor | None], start: int) -> torch.Tensor | None:
    """One chunk through a plain nn.Linear head: the logits written straight into `out`, and
    one chunk-sized buffer for the log-softmax, turned in place into the logits' gradient."""
    weight, bias = head.weight, head.bias
    if bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)
    if not bool(valid.any()):
        return None
    log_probs = torch.log_softmax(out.float(), -1)
    target = y.clamp(min=0)[:, None]
    counted = valid.to(log_probs.dtype)[:, None]
    loss = -(log_probs.gather(1, target) * counted).sum()
    grad_weight, grad_bias = accumulators
    if grad_hidden is None and grad_weight is None and grad_bias is None:
        return loss
    # d(mean loss)/d(logits) = (softmax - one_hot(label)) / count, zero on ignored rows
    grad = log_probs.exp_().scatter_add_(1, target, -counted).mul_(counted * scale)
    grad = grad.to(weight.dtype)
    if grad_hidden is not None:
        torch.mm(grad, weight, out=grad_hidden[start:start + len(h)])
    if grad_weight is not None:
        grad_weight.addmm_(grad.t(), h)
    if grad_bias is not None:
        grad_bias.add_(grad.sum(0))
    return loss


def _module_chunk(head: nn.Module, h: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                  scale: torch.Tensor, grad_hidden: torch.Tensor | None,
                  wanted: list[torch.Tensor], grad_params: list[torch.Tensor], start: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk through any head module (an adapter layer, a quantised or wrapped head):
    its logits, loss, and gradients by autograd on the chunk alone."""
    if not bool(valid.any()):
        with torch.no_grad():
            return head(h), None
    if grad_hidden is None and not wanted:
        with torch.no_grad():
            logits = head(h)
            return logits, F.cross_entropy(logits.float(), y, ignore_index=-100,
                                           reduction="sum")
    with torch.enable_grad():
        h.requires_grad_(grad_hidden is not None)
        logits = head(h)
        loss = F.cross_entropy(logits.float(), y, ignore_index=-100, reduction="sum")
        grads = torch.autograd.grad(loss * scale, ([h] if grad_hidden is not None else [])
                                    + wanted)
    if grad_hidden is not None:
        grad_hidden[start:start + len(h)] = grads[0]
        grads = grads[1:]
    for acc, g in zip(grad_params, grads, strict=True):
        acc += g
    return logits.detach(), loss.detach()


def lm_head_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy of `head(hidden)` (position t predicts labels[t + 1]; -100 is
    ignored; the mean over the counted tokens), and the logits [batch, seq, vocab].

    The same values as `causal_lm_loss(head(hidden), labels)` to float rounding, without the
    full-size log-softmax or its gradient. The logits carry no gradient: they are written
    chunk by chunk into one tensor for the caller to read, not to differentiate.
    """
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:].to(hidden.device)
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} for hidden states of shape "
                         f"{tuple(hidden.shape)}: they must cover the same positions.")
    flat = hidden.reshape(-1, hidden.shape[-1])
    params = [p for p in head.parameters() if p.requires_grad]
    chunk = max(1, LOSS_CHUNK_ELEMENTS // _vocab_size(head, flat))
    return _HeadLoss.apply(flat, labels.reshape(-1), head, chunk, hidden.shape[:-1], *params)


def _vocab_size(head: nn.Module, hidden: torch.Tensor) -> int:
    """The head's output width: `out_features` (linear and adapter layers), else what it
    makes of one position (a wrapper such as modules_to_save's)."""
    size = getattr(head, "out_features", None)
    if isinstance(size, int):
        return size
    with torch.no_grad():
        return int(head(hidden[:1]).shape[-1])


class _LowRankLinear(torch.autograd.Function):
    """x @ (W + sum_i s_i * B_i @ A_i)^T + bias, saving x and each thin x @ A_i^T."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                scales: tuple[float, ...], *factors: torch.Tensor) -> torch.Tensor:
        merged = _merge(weight, scales, factors)
        out = F.linear(x, merged, bias)
        flat = x.reshape(-1, x.shape[-1])
        # x @ A^T is [tokens, r]: kept rather than recomputed (a pass over x each)
        thin = [flat @ a.t() if ctx.needs_input_grad[5 + 2 * i] else None
                for i, a in enumerate(factors[0::2])]
        ctx.scales = scales
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, *factors, *thin)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, *rest = ctx.saved_tensors
        n = len(ctx.scales)
        factors, thin = rest[:2 * n], rest[2 * n:]
        g = grad.reshape(-1, grad.shape[-1])
        flat = x.reshape(-1, x.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ _merge(weight, ctx.scales, factors)).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = g.t() @ flat
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        grad_factors: list[torch.Tensor | None] = []
        for i, scale in enumerate(ctx.scales):
            b = factors[2 * i + 1]
            want_a, want_b = ctx.needs_input_grad[4 + 2 * i], ctx.needs_input_grad[5 + 2 * i]
            grad_factors.append(((g @ b).t() @ flat) * scale if want_a else None)
            grad_factors.append((g.t() @ thin[i]) * scale if want_b else None)
        return (grad_x, grad_weight, grad_bias, None, *grad_factors)


def _merge(weight: torch.Tensor, scales: Sequence[float],
           factors: Sequence[torch.Tensor]) -> torch.Tensor:
    merged = weight
    for scale, a, b in zip(scales, factors[0::2], factors[1::2], strict=True):
        merged = torch.addmm(merged, b, a, alpha=scale)
    return merged


def low_rank_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    adapters: Sequence[tuple[torch.Tensor, torch.Tensor, float]]
                    ) -> torch.Tensor:
    """x @ (W + sum of scale * B @ A)^T + bias for (A [r, in], B [out, r], scale) adapters:
    one GEMM instead of the base one plus two thin ones, a scale and an add per adapter, and
    only x (shared by every projection of the same input) and x @ A^T kept for backward."""
    scales = tuple(float(s) for _, _, s in adapters)
    factors = [t for a, b, _ in adapters for t in (a, b)]
    return _LowRankLinear.apply(x, weight, bias, scales, *factors)


class _RMSNorm(torch.autograd.Function):
    """weight * (x * rsqrt(mean(x^2) + eps)) in float32, saving x and the reciprocal RMS."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # the same ops, in the same order, as RMSNorm.forward: the same values
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.mark_non_differentiable(rstd)
        return weight * (xf * rstd).to(x.dtype), rstd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_rstd):
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = (grad * weight).float()
            # d/dx of x * rstd: rstd * (g - normed * mean(g * normed))
            grad_x = (rstd * (g - normed * (g * normed).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm for training: saves the input and the reciprocal RMS (one value per row) only.
    In a `lean_saving` block its output is remade from those two for the layers using it."""
    out, rstd = _RMSNorm.apply(x, weight, eps)
    # the forward's last two ops on the same operands: the same values
    remade_on_save(out, lambda: weight * (x.float() * rstd).to(x.dtype))
    return out


class _SiLUGate(torch.autograd.Function):
    """silu(gate) * up, saving gate and up (not silu's output nor the product)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        # silu's own backward kernel: one pass instead of the five of its formula
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) \
            if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for training, keeping only gate and up for the backward pass."""
    return _SiLUGate.apply(gate, up)


class _Recipe:
    """How to remake a tensor, and the remade tensor while saves of it still wait for it:
    the layers sharing one input (q, k and v) remake it once."""

    def __init__(self, product: torch.Tensor, remake: Callable[[], torch.Tensor]) -> None:
        self.product = weakref.ref(product)
        self.remake = remake
        self.waiting = 0
        self.made: torch.Tensor | None = None

    def get(self) -> torch.Tensor:
        made = self.made
        if made is None:
            with torch.no_grad():
                made = self.remake()
        self.waiting -= 1
        self.made = made if self.waiting > 0 else None
        return made


_scope = threading.local()  # .recipes: {storage address: _Recipe}


def _pack(t: torch.Tensor):
    recipe = _scope.recipes.get(t.untyped_storage().data_ptr())
    if recipe is not None:
        product = recipe.product()
        # Only while the registered tensor lives can its address not be another tensor's.
        # The tensor itself or a flat view of it (a linear layer may save x.view(-1, n)).
        if product is not None and t.numel() == product.numel() and t.is_contiguous():
            recipe.waiting += 1
            return recipe, t.shape
    return t


def _unpack(saved):
    if isinstance(saved, torch.Tensor):
        return saved
    recipe, shape = saved
    return recipe.get().view(shape)


@contextmanager
def lean_saving() -> Iterator[None]:
    """Around a block's training forward: tensors registered with `remade_on_save` are not
    kept for the backward pass by the layers that use them, but remade when needed.

    Does nothing without gradients, or under other saved-tensor hooks (gradient
    checkpointing, offloading), which then see every saved tensor as before.
    """
    # torch has no public way to ask for the active saved-tensor hooks
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if not torch.is_grad_enabled() or top is not None:
        yield
        return
    _scope.recipes = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _scope.recipes = None


def lean() -> bool:
    """Whether a `lean_saving` scope is active here (and no other hooks above it)."""
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return top is not None and top[0] is _pack and getattr(_scope, "recipes", None) is not None


def remade_on_save(product: torch.Tensor, remake: Callable[[], torch.Tensor]) -> None:
    """Inside `lean_saving`: any layer that saves `product` for its backward pass keeps
    `remake` instead, which must give back the same values from tensors kept anyway."""
    if lean():
        _scope.recipes[product.untyped_storage().data_ptr()] = _Recipe(product, remake)
