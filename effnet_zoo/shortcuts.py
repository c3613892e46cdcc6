"""The one place that decides whether a speed shortcut may run.

The eval-mode shortcuts (BatchNorm folded into the convolution and called through ``conv._conv_forward``, the
in-place squeeze-excitation gate) skip modules or overwrite tensors. They are only allowed where nothing can tell:
a hook on an inner module would not fire, a parametrization or pruning mask (applied by a pre-hook) would be
ignored, a captured activation would be overwritten, and a transform (``torch.func``, AOT autograd, ``make_fx``,
fake tensors, FLOP-counting modes) would meet Python-side state it cannot follow. Everywhere else the model runs
the plain conv -> BN -> act path through the modules themselves, as any ``nn.Module`` does.

Every shortcut asks :func:`shortcut_allowed`; the input checks ask :func:`values_readable`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module
from torch.utils import _python_dispatch

# torch >= 2.12 names the FX-only test (its is_fx_tracing() also answers for export, with a warning)
_is_fx_symbolic_tracing = getattr(
    torch.fx._symbolic_trace, "is_fx_symbolic_tracing", torch.fx._symbolic_trace.is_fx_tracing
)
# The dicts torch's global hooks live in (register_module_forward_hook & co. add to them in place).
_GLOBAL_HOOKS = (
    _module._global_forward_hooks,
    _module._global_forward_pre_hooks,
    _module._global_backward_hooks,
    _module._global_backward_pre_hooks,
)


# What a shortcut stands in for, as torch defines it: a profiler or fake-quantizer that patches one of these
# (ptflops and DeepSpeed's profiler patch F.batch_norm; others patch a class's forward) must see every call.
_FUNCTIONS = {name: getattr(F, name) for name in ("batch_norm", "silu", "relu", "relu6", "hardswish")}
_FORWARDS = {cls: cls.forward for cls in (nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.ReLU, nn.ReLU6, nn.Hardswish)}


def watch_forward(cls: type) -> type:
    """Count a patch of ``cls.forward`` as a patch (our layers whose forward a shortcut skips); a class decorator."""
    _FORWARDS[cls] = cls.forward
    return cls


def _patched() -> bool:
    for name, function in _FUNCTIONS.items():
        if getattr(F, name) is not function:
            return True
    for cls, forward in _FORWARDS.items():
        if cls.forward is not forward:
            return True
    return False


def _transformed(x: torch.Tensor) -> bool:
    """A functorch transform (vmap, grad, jvp, functionalize), a dispatch mode (fake tensors, ``make_fx`` / AOT
    autograd, ``FlopCounterMode``, ...) or a tensor subclass: values cannot be read, and ops must be seen as
    written."""
    return (
        torch._C._functorch.peek_interpreter_stack() is not None
        or _python_dispatch.is_in_torch_dispatch_mode()
        or type(x) is not torch.Tensor
    )


def values_readable(x: torch.Tensor) -> bool:
    """Whether Python may read ``x``'s values (``bool()``, ``.item()``): plain eager execution only."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return not _transformed(x)


def layout_change_allowed(x: torch.Tensor) -> bool:
    """May ``x`` be copied to channels_last? A layout, not a value: every tool sees the same numbers, and recorded
    graphs may keep the copy; only functorch's batching rules (``vmap``) cannot copy to that layout."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    return torch._C._functorch.peek_interpreter_stack() is None


def _observed(module: nn.Module) -> bool:
    """Hooks, a parametrization (``parametrize``, ``weight_norm``), pruning (a pre-hook) or a patched ``forward``."""
    state = module.__dict__  # read directly: this runs for every layer of every forward
    return bool(
        state["_forward_hooks"]
        or state["_forward_pre_hooks"]
        or state["_backward_hooks"]
        or state["_backward_pre_hooks"]
        or "parametrizations" in state["_modules"]
        or "forward" in state
    )


def training_shortcut_allowed(x: torch.Tensor, *modules: nn.Module) -> bool:
    """May a training shortcut (an autograd function that saves less than the modules would, effnet_zoo.fused)
    replace ``modules`` on ``x``? Where :func:`shortcut_allowed` says nothing can tell, with gradients on, and not
    under ``torch.compile``, which plans what to save (and recomputes) itself."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling() and shortcut_allowed(x, *modules)


def shortcut_allowed(x: torch.Tensor, *modules: nn.Module) -> bool:
    """May a shortcut that bypasses or overwrites the work of ``modules`` run on input ``x``?

    Only when nothing can tell the difference: no global module hooks, nothing patched (:func:`_patched`), none of
    ``modules`` observed or altered (:func:`_observed`), and plain eager execution (or a ``torch.compile`` trace,
    which follows the Python and the hooks itself), not a recorded graph, a transform or a dispatch mode. Callers
    also test what their own shortcut needs (eval mode, the exact module types it was written for).
    """
    if any(_GLOBAL_HOOKS) or _patched():
        return False
    for module in modules:  # a loop, not any(genexpr): this runs for every layer of every forward
        if _observed(module):
            return False
    if torch.compiler.is_compiling():
        return True
    return not (torch.jit.is_tracing() or _is_fx_symbolic_tracing() or _transformed(x))
