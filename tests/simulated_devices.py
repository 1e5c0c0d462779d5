"""Several CUDA devices simulated on the CPU, to test placement on a machine with none.

Under `SimulatedDevices`, a tensor carries the device it would live on (``cuda:0``, ``cuda:1``, ...; ``cpu`` when
untagged) and reports it as ``tensor.device``; the data stay on the CPU. Every torch call is checked as CUDA checks
it: an op whose tensors lie on two devices raises `WrongPlacement` (except what CUDA allows too: copies, CPU
scalars, CPU index tensors); ``.to(device)`` and factory functions with ``device=`` retag, and
``torch.autograd.grad`` puts each gradient on its input's device (``.backward()`` and ``.grad`` are not simulated:
the engines take gradients with ``torch.autograd.grad``).

`place(module, device)` puts a module's parameters and buffers on a simulated device; `dispatch` adds what
accelerate adds to a model split over GPUs (each top-level module moves its inputs to its own device, and the
model's output comes back to the input device); `on_gpus` does both for a bridge, with a standard placement."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from circuits import _compat

TAG = "_simulated_device"
CPU = torch.device("cpu")


class WrongPlacement(RuntimeError):
    pass


def device_of(t: torch.Tensor) -> torch.device:
    return getattr(t, TAG, t.device)


def _tag(value: Any, device: torch.device) -> Any:
    def tag(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and device.type != "cpu":
            setattr(t, TAG, device)
        elif isinstance(t, torch.Tensor) and hasattr(t, TAG):
            delattr(t, TAG)
        return t
    return tree_map(tag, value)


def _requested(func: Any, args: tuple, kwargs: dict) -> Any:
    """The device a call asks for (``device=`` or ``.to(device)`` / ``.to(tensor)`` / ``.cuda()`` / ``.cpu()``)."""
    if func is torch.Tensor.cpu:
        return CPU
    if func is torch.Tensor.cuda:
        return torch.device("cuda", args[1] if len(args) > 1 else 0)
    if "device" in kwargs and kwargs["device"] is not None:
        return torch.device(kwargs["device"])
    if func is torch.Tensor.to:
        for arg in args[1:]:
            if isinstance(arg, torch.Tensor):
                return device_of(arg)
            if isinstance(arg, (str, torch.device)):
                return torch.device(arg)
    return None


def _on_cpu(func: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The same call with every device it names replaced by the CPU, where the data are (``.to(tensor)``: that
    tensor's dtype)."""
    if func is torch.Tensor.cuda:
        return args[:1], {}
    if "device" in kwargs:
        kwargs = {**kwargs, "device": CPU}
    if func is torch.Tensor.to:
        args = args[:1] + tuple(CPU if isinstance(a, (str, torch.device)) else
                                (a.dtype if isinstance(a, torch.Tensor) else a) for a in args[1:])
    return args, kwargs


DEVICE_GETTER = torch.Tensor.device.__get__
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
COPIES = {torch.Tensor.copy_}


class SimulatedDevices(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func == DEVICE_GETTER:  # a new method-wrapper each time: equal, not identical
            return device_of(args[0])
        if func is torch.Tensor.numpy and device_of(args[0]).type != "cpu":
            raise WrongPlacement(f"numpy() of a tensor on {device_of(args[0])}")
        if func is torch.autograd.grad:  # each gradient lies on its input's device
            inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
            inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
            grads = func(*args, **kwargs)
            return tuple(g if g is None else _tag(g, device_of(t)) for g, t in zip(grads, inputs))
        requested = _requested(func, args, kwargs)
        if requested is not None:
            source = args[0] if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu) else None
            call_args, call_kwargs = _on_cpu(func, args, kwargs)
            out = func(*call_args, **call_kwargs)
            if source is not None and out is source and device_of(source) != requested:
                out = out.view_as(out)  # a real move gives a new tensor
            return _tag(out, requested)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = self._devices(func, tensors, args)
        if len(devices) > 1 and func not in COPIES:
            raise WrongPlacement(f"{getattr(func, '__qualname__', func)} got tensors on {sorted(map(str, devices))}")
        out = func(*args, **kwargs)
        if func in COPIES or func is torch.Tensor.__setitem__:
            return out
        return _tag(out, devices.pop() if devices else CPU)

    @staticmethod
    def _devices(func: Any, tensors: list[torch.Tensor], args: tuple) -> set[torch.device]:
        """Devices that must agree: CPU scalars mix with anything, and so do CPU index tensors."""
        if func is torch.Tensor.__setitem__ and len(tensors) > 1 and tensors[-1] is args[-1]:
            tensors = tensors[:-1]  # the value is copied in, from any device (as copy_)
        first = tensors[:1] if func in INDEXING else tensors
        rest = tensors[1:] if func in INDEXING else []
        devices = {device_of(t) for t in first if not (t.ndim == 0 and device_of(t).type == "cpu")}
        devices |= {device_of(t) for t in rest if device_of(t).type != "cpu"}
        return devices or ({device_of(tensors[0])} if tensors else set())


def place(module: torch.nn.Module, device: str) -> None:
    """Put `module`'s parameters and buffers on a simulated device."""
    for t in [*module.parameters(), *module.buffers()]:
        _tag(t, torch.device(device))


def _moved(value: Any, device: torch.device) -> Any:
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def dispatch(modules: dict[torch.nn.Module, str], top: torch.nn.Module, input_device: str) -> list[Any]:
    """What accelerate's dispatch adds: each module in `modules` moves its inputs to its device before it runs, and
    `top`'s output comes back to `input_device`. Returns the hook handles."""
    handles = []
    for module, device in modules.items():
        place(module, device)
        handles.append(module.register_forward_pre_hook(
            lambda m, args, kwargs, d=torch.device(device): (_moved(args, d), _moved(kwargs, d)), with_kwargs=True))
    handles.append(top.register_forward_hook(lambda m, args, out: _moved(out, torch.device(input_device))))
    return handles


def on_gpus(model: Any, unembedding: str = "cuda:1", gpus: int = 2) -> Any:
    """`model` (a bridge) dispatched on simulated GPUs: the embedding on cuda:0, block l on cuda:(l mod `gpus`) and
    the final norm with the last block, the unembedding on `unembedding` (cuda:0 as with tied embeddings), inputs
    on cuda:0 (``gpus=1``: everything on cuda:0, the tasks' prompts still built on the CPU)."""
    last = model.cfg.n_layers - 1
    placement = {model.embed: "cuda:0", model.ln_final: f"cuda:{last % gpus}", model.unembed: unembedding}
    placement.update({block: f"cuda:{layer % gpus}" for layer, block in enumerate(model.blocks)})
    for name in ("pos_embed", "rotary_emb"):
        if getattr(model, name, None) is not None:
            placement[getattr(model, name)] = "cuda:0"
    dispatch({_compat.original(component): device for component, device in placement.items()}, model, "cuda:0")
    model.cfg.device = "cuda:0"
    return model
