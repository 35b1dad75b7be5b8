"""``--build package.module:function``: a user's own model, data and loss for the ``measure`` verb.

The function is imported (from the installed packages, or from the current folder, which is put first
on ``sys.path`` the way ``python -m`` does) and called without arguments; it returns
``(model, loader, loss)``: a :class:`torch.nn.Module` (trained, on its device), a re-iterable of
``(inputs, targets)`` batches such as a :class:`torch.utils.data.DataLoader` (or a tuple ``(X, y)`` of
tensors), and a loss: ``"cross_entropy"``, ``"mse"``, ``"hinge2"`` or a callable
``loss(outputs (B, ...), targets (B, ...)) -> (B,)`` of per-example losses.

Example ``mynet.py`` in the current folder, measured with ``flatminima measure --build mynet:build``::

    def build():
        model = torch.load("model.pt", weights_only=False)
        loader = DataLoader(MyDataset("train"), batch_size=256)
        return model, loader, "cross_entropy"

Importing the module runs its code: ``--build`` is for code the user wrote and trusts, like ``python
mynet.py`` (configs never execute code; this option is the explicit way to).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ..landscape import LOSSES

__all__ = ["load_build"]


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):  # the module itself, not one of its imports
            raise ConfigError(f"--build: no module named {module_name!r} (looked in the installed packages and in "
                              f"{cwd})") from None
        raise ConfigError(f"--build: importing {module_name!r} failed: {err}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def load_build(spec: str) -> tuple[nn.Module, Any, str | Callable[[Tensor, Tensor], Tensor]]:
    """Import ``package.module:function``, call the function and check what it returns.

    Returns ``(model, loader, loss)`` as the function returned them. Raises
    :class:`~flatminima.errors.ConfigError` with one clear line for a malformed spec, a module or
    function that cannot be found, an exception raised by the function, or a return value that is not
    ``(nn.Module, iterable of batches, loss name or callable)``.
    """
    module_name, sep, func_name = (spec or "").partition(":")
    if not sep or not module_name or not func_name or not func_name.isidentifier():
        raise ConfigError(f"--build must look like package.module:function, got {spec!r}")
    module = _import(module_name)
    fn = getattr(module, func_name, None)
    if fn is None:
        raise ConfigError(f"--build: module {module_name!r} has no function {func_name!r}")
    if not callable(fn):
        raise ConfigError(f"--build: {spec} is a {type(fn).__name__}, not a function")
    try:
        out = fn()
    except Exception as err:  # the user's code: report it in one line, with its type
        raise ConfigError(f"--build: {spec}() raised {type(err).__name__}: {err}") from err
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ConfigError(f"--build: {spec}() must return (model, loader, loss), got {type(out).__name__}"
                          + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    model, loader, loss = out
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--build: the model {spec}() returned is a {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(loader, Iterable) or isinstance(loader, (str, bytes)):
        raise ConfigError(f"--build: the loader {spec}() returned is a {type(loader).__name__}, not an iterable of "
                          "(inputs, targets) batches such as a DataLoader")
    if iter(loader) is loader:
        raise ConfigError(f"--build: the loader {spec}() returned is a one-shot iterator; return a DataLoader or a "
                          "list of batches, which can be iterated again at every pass")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError(f"--build: unknown loss {loss!r}; choose one of {sorted(LOSSES)} or return a callable")
    elif not callable(loss):
        raise ConfigError(f"--build: the loss {spec}() returned is a {type(loss).__name__}, not a name or a callable")
    return model, loader, loss
