"""Fused training ops: fewer passes over memory and fewer tensors kept for the backward pass.

Each computes what the plain composition of torch ops computes (the same forward values in
eval and without gradients, where the callers keep using the plain ops) but saves less:

- `lm_head_loss`: the LM head and next-token cross-entropy over chunks of tokens, with the
  gradients computed chunk by chunk during the forward pass, so neither the full log-softmax
  nor its gradient ever exists (for a 49k vocabulary that is 0.4 GB per 2048 tokens each).
- `low_rank_linear`: x @ (W + sum of s * B @ A)^T + bias in one GEMM (LoRA with no dropout),
  saving only x and the thin x @ A^T; the merged weight is rebuilt in the backward pass.
  `project` does so for several layers of one input (q, k and v; gate and up) at once.
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
        # the logits take no gradient: without this autograd would hand backward a zero-filled
        # tensor of their size (0.4 GB for 2048 tokens of a 49k vocabulary)
        ctx.set_materialize_grads(False)
        return mean, logits_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor | None, _grad_logits):
        if grad_loss is None:  # (not materialised) the loss took no part in what is derived
            return (None,) * (5 + len(ctx.wanted))
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


# One linear layer as its parts: weight, bias, and the low-rank adapters (A [r, in],
# B [out, r], scale) whose scale * B @ A adds to the weight.
LowRankParts = tuple[torch.Tensor, torch.Tensor | None,
                     Sequence[tuple[torch.Tensor, torch.Tensor, float]]]


class _LowRankLinears(torch.autograd.Function):
    """Linear layers of one input, x @ (W_j + sum_i s_i * B_i @ A_i)^T + b_j for each layer j,
    as one GEMM over their stacked merged weights: the output is [..., sum of out_j].

    Saves x and the thin x @ A_i^T of every adapter (one GEMM for all); the merged weights
    are rebuilt in the backward pass. `plan` holds per layer (out_features, scales), and
    `tensors` per layer W_j, b_j (or None), then A_i, B_i of each of its adapters.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, plan: tuple[tuple[int, tuple[float, ...]], ...],
                *tensors: torch.Tensor | None) -> torch.Tensor:
        layers = _layers(plan, tensors)
        merged = _merge_layers(layers)
        biases = [b for _, b, _ in layers]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else w.new_zeros(w.shape[0]) for w, b, _ in layers])
        out = F.linear(x, merged, bias)
        # x @ A^T ([tokens, r] per adapter) for the B whose gradient is wanted: kept, not
        # recomputed (a pass over x), and made for all adapters by one GEMM
        needs = ctx.needs_input_grad[2:]
        wanted_b = [a for (a, _, _), at in zip(_adapters(layers), _adapter_places(plan),
                                               strict=True) if needs[at + 1]]
        thin = (x.reshape(-1, x.shape[-1]) @ torch.cat(wanted_b).t()) if wanted_b else None
        ctx.plan = plan
        ctx.save_for_backward(x, thin, *tensors)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, thin, *tensors = ctx.saved_tensors
        layers = _layers(ctx.plan, tensors)
        g = grad.reshape(-1, grad.shape[-1])
        flat = x.reshape(-1, x.shape[-1])
        needs = ctx.needs_input_grad[2:]
        grads: dict[int, torch.Tensor] = {}  # position in `tensors` -> its gradient
        grad_x = (g @ _merge_layers(layers)).view(x.shape) if ctx.needs_input_grad[0] else None
        # the scaled g_j @ B_i of every adapter whose A wants a gradient: stacked, so that
        # all the A gradients come from one GEMM with x
        scaled_gb, a_places, thin_col, row, place = [], [], 0, 0, 0
        for w, _bias, adapters in layers:
            g_j = g[:, row:row + w.shape[0]]
            if needs[place]:
                grads[place] = g_j.t() @ flat
            if needs[place + 1]:
                grads[place + 1] = g_j.sum(0)
            place += 2
            for a, b_i, scale in adapters:
                if needs[place]:
                    scaled_gb.append((g_j @ b_i).mul_(scale))
                    a_places.append(place)
                if needs[place + 1]:
                    rank = a.shape[0]
                    grads[place + 1] = (g_j.t() @ thin[:, thin_col:thin_col + rank]).mul_(scale)
                    thin_col += rank
                place += 2
            row += w.shape[0]
        if scaled_gb:
            stacked = torch.cat(scaled_gb, 1).t() @ flat
            for chunk, at in zip(stacked.split([t.shape[1] for t in scaled_gb]), a_places,
                                 strict=True):
                grads[at] = chunk
        return (grad_x, None, *(grads.get(i) for i in range(len(tensors))))


def _layers(plan, tensors) -> list[LowRankParts]:
    layers, at = [], 0
    for _out, scales in plan:
        w, b = tensors[at], tensors[at + 1]
        factors = tensors[at + 2:at + 2 + 2 * len(scales)]
        layers.append((w, b, list(zip(factors[0::2], factors[1::2], scales, strict=True))))
        at += 2 + 2 * len(scales)
    return layers


def _adapters(layers: Sequence[LowRankParts]):
    return [adapter for _, _, adapters in layers for adapter in adapters]


def _adapter_places(plan) -> list[int]:
    """Where each adapter's A is in the flat `tensors` (its B follows)."""
    places, at = [], 0
    for _out, scales in plan:
        places += [at + 2 + 2 * i for i in range(len(scales))]
        at += 2 + 2 * len(scales)
    return places


def _merge_layers(layers: Sequence[LowRankParts]) -> torch.Tensor:
    """The layers' merged weights W_j + sum of s * B @ A, stacked by rows."""
    if len(layers) == 1:
        merged = layers[0][0]
        for a, b, scale in layers[0][2]:
            merged = torch.addmm(merged, b, a, alpha=scale)
        return merged
    first = layers[0][0]
    merged = first.new_empty((sum(w.shape[0] for w, _, _ in layers), first.shape[1]))
    row = 0
    for w, _, adapters in layers:
        rows = merged[row:row + w.shape[0]]
        if not adapters:
            rows.copy_(w)
        for i, (a, b, scale) in enumerate(adapters):
            # written straight into the stacked weight: no merged copy per layer
            torch.addmm(w if i == 0 else rows, b, a, alpha=scale, out=rows)
        row += w.shape[0]
    return merged


def _apply(x: torch.Tensor, layers: Sequence[LowRankParts]) -> torch.Tensor:
    plan = tuple((w.shape[0], tuple(float(s) for _, _, s in adapters))
                 for w, _, adapters in layers)
    tensors = [t for w, b, adapters in layers
               for t in (w, b, *(f for a, b_i, _ in adapters for f in (a, b_i)))]
    return _LowRankLinears.apply(x, plan, *tensors)


def low_rank_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    adapters: Sequence[tuple[torch.Tensor, torch.Tensor, float]]
                    ) -> torch.Tensor:
    """x @ (W + sum of scale * B @ A)^T + bias for (A [r, in], B [out, r], scale) adapters:
    one GEMM instead of the base one plus two thin ones, a scale and an add per adapter, and
    only x (shared by every projection of the same input) and x @ A^T kept for backward."""
    return _apply(x, [(weight, bias, adapters)])


def low_rank_parts(layer: nn.Module, x: torch.Tensor) -> LowRankParts | None:
    """A layer as weight, bias and adapters, when it is x @ (W + sum of s * B @ A)^T + b in
    x's dtype: a plain nn.Linear, or a layer whose `low_rank_parts(x)` says so (an adapter
    layer, without dropout); None otherwise."""
    if type(layer) is nn.Linear:
        return (layer.weight, layer.bias, ()) if layer.weight.dtype == x.dtype else None
    parts = getattr(layer, "low_rank_parts", None)
    return parts(x) if callable(parts) else None


def project(x: torch.Tensor, layers: Sequence[nn.Module]) -> torch.Tensor | None:
    """The outputs of several linear layers of the same input, side by side in one tensor
    [..., sum of their out_features], by one GEMM (and one for their adapters' x @ A^T),
    when every layer is low-rank adapted or plain (see `low_rank_parts`); None otherwise,
    or when no layer has an adapter (plain layers keep their own path)."""
    parts = [low_rank_parts(layer, x) for layer in layers]
    if any(p is None for p in parts) or not any(adapters for _, _, adapters in parts):
        return None
    return _apply(x, parts)


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
    """silu(gate) * up, saving gate and up (not silu's output nor the product). The inputs
    are gate and up, or one tensor holding gate then up in its last dimension (a joint
    projection's output), whose gradient is then made as one tensor too."""

    @staticmethod
    def forward(ctx, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*inputs)
        gate, up = inputs if len(inputs) == 2 else inputs[0].chunk(2, -1)
        return F.silu(gate).mul_(up)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        inputs = ctx.saved_tensors
        if len(inputs) == 1:
            grad_joined = torch.empty_like(inputs[0])
            grad_gate, grad_up = grad_joined.chunk(2, -1)
            gate, up = inputs[0].chunk(2, -1)
            torch.mul(grad, F.silu(gate), out=grad_up)
            torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
            return grad_joined
        gate, up = inputs
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        # silu's own backward kernel: one pass instead of the five of its formula
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) \
            if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def silu_gate(gate: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up for training, keeping only gate and up for the backward pass. Without
    `up`, `gate` holds gate then up side by side in its last dimension."""
    return _SiLUGate.apply(gate) if up is None else _SiLUGate.apply(gate, up)


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
