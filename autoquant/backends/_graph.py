"""Static int8 on a torch.fx graph, on plain tensors (no torch.ao, no quantized tensors).

The model is traced with plain ``torch.fx`` (``torch.relu``/``x.relu()`` spelled
``F.relu``), conv -> BatchNorm pairs are folded into the conv, and every statically
planned Linear/Conv becomes a :class:`~autoquant.backends._modules.StaticLinear` /
``StaticConv`` whose

* input is quantized with the calibrated range of the tensor it reads (a clamp's output
  when a clamp feeds it, so ReLU6's [0, 6] gets every uint8 level: issue 15);
* ReLU / ReLU6 / hardtanh / constant clamp that is its only consumer is fused into the
  kernel as a post-op;
* output is uint8 in the next op's input qparams when its only consumer is another
  static int8 op (requantization fused into the kernel, no float tensor between
  them), and float otherwise.

Calibration records statistics on the same traced, BN-folded graph
(:func:`calibration_graph`), so node names agree between calibration and build.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from autoquant.errors import CalibrationError

if TYPE_CHECKING:
    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats

__all__ = ["trace", "calibration_graph", "convert_static", "post_op_of"]

_CONVS = (nn.Conv1d, nn.Conv2d)
# Post-ops each oneDNN int8 kernel fuses (measured: conv1d refuses hardtanh).
FUSABLE = {nn.Linear: ("relu", "hardtanh"), nn.Conv1d: ("relu",), nn.Conv2d: ("relu", "hardtanh")}
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """A deep copy of ``model`` traced with torch.fx, ReLU spelled ``F.relu`` everywhere."""
    root = copy.deepcopy(model).eval()
    graph = torch.fx.Tracer().trace(root)
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch.relu:
            node.target = F.relu
        elif node.op == "call_method" and node.target == "relu":
            node.op, node.target = "call_function", F.relu
    graph.lint()
    return torch.fx.GraphModule(root, graph, class_name=type(model).__name__)


def _fold_bn(gm: torch.fx.GraphModule) -> None:
    """Fold every conv -> BatchNorm (the BN the conv's only consumer) into the conv."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BNS):
            continue
        src = node.args[0]
        if not (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(gm.get_submodule(src.target), _CONVS)
            and len(src.users) == 1
        ):
            continue
        conv, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
        if bn.running_mean is None or not bn.track_running_stats:
            continue
        with torch.no_grad():
            w, b = torch.nn.utils.fusion.fuse_conv_bn_weights(
                conv.weight,
                conv.bias,
                bn.running_mean,
                bn.running_var,
                bn.eps,
                bn.weight,
                bn.bias,
            )
            conv.weight, conv.bias = w, b
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def calibration_graph(model: nn.Module) -> torch.fx.GraphModule:
    """The traced, BN-folded graph both calibration and :func:`convert_static` run."""
    gm = trace(model)
    _fold_bn(gm)
    return gm


def _const(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def post_op_of(
    gm: torch.fx.GraphModule, node: torch.fx.Node
) -> tuple[str, tuple[float, ...]] | None:
    """The oneDNN post-op computing ``node`` (a clamp of its first input), or None."""
    args, kwargs = node.args, node.kwargs
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if type(m) is nn.ReLU:
            return ("relu", ())
        if type(m) in (nn.ReLU6, nn.Hardtanh):
            return ("hardtanh", (float(m.min_val), float(m.max_val)))
        return None
    if node.op == "call_function":
        if node.target is F.relu:
            return ("relu", ())
        if node.target is F.relu6:
            return ("hardtanh", (0.0, 6.0))
        if node.target is F.hardtanh:
            lo = _const(kwargs.get("min_val", args[1] if len(args) > 1 else -1.0))
            hi = _const(kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
            return None if lo is None or hi is None else ("hardtanh", (lo, hi))
    if (node.op == "call_function" and node.target in (torch.clamp, torch.clip)) or (
        node.op == "call_method" and node.target in ("clamp", "clip")
    ):
        lo = _const(kwargs.get("min", args[1] if len(args) > 1 else None))
        hi = _const(kwargs.get("max", args[2] if len(args) > 2 else None))
        if lo is not None and hi is not None:
            return ("hardtanh", (lo, hi))
    return None


_TRANSPARENT_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity)
_TRANSPARENT_FUNCTIONS = (F.max_pool1d, F.max_pool2d, torch.flatten)
_TRANSPARENT_METHODS = ("flatten", "view", "reshape", "contiguous")


def _is_max_pool(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), (nn.MaxPool1d, nn.MaxPool2d))
    return node.op == "call_function" and node.target in (F.max_pool1d, F.max_pool2d)


def _transparent(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Ops that move or select values without computing new ones."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return isinstance(m, _TRANSPARENT_MODULES) and not getattr(m, "return_indices", False)
    if node.op == "call_function":
        return node.target in _TRANSPARENT_FUNCTIONS and not node.kwargs.get("return_indices")
    return node.op == "call_method" and node.target in _TRANSPARENT_METHODS


def max_pool_u8(fn: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A max-pool on the uint8 output of an int8 kernel.

    Eager torch 2.13 refuses uint8 max-pools on channels-last tensors (what oneDNN
    returns) and pools contiguous uint8 ~17x slower than float, so eager pools the
    integers as float (exact: they are small integers) and converts back; compiled,
    Inductor pools the uint8 tensor itself.
    """
    pool = F.max_pool1d if fn == "max_pool1d" else F.max_pool2d
    if torch.compiler.is_compiling():
        return pool(x, *args, **kwargs)
    return pool(x.float(), *args, **kwargs).to(x.dtype)


def _pool_on_uint8(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        fn = "max_pool1d" if isinstance(m, nn.MaxPool1d) else "max_pool2d"
        node.args = (fn, node.args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        node.kwargs = {}
    else:
        node.args = ("max_pool1d" if node.target is F.max_pool1d else "max_pool2d", *node.args)
    node.op, node.target = "call_function", max_pool_u8


def convert_static(
    model: nn.Module,
    plan: Plan,
    fqns: list[str],
    stats: CalibrationStats,
    used_keys: list[str],
    kernels: dict[str, str],
) -> nn.Module:
    """The graph builder of the x86 static rows (see the module docstring)."""
    from autoquant.backends._build import quantized_weight, set_submodule
    from autoquant.backends._modules import StaticConv, StaticLinear
    from autoquant.observers import activation_qparams

    gm = calibration_graph(model)
    wanted = set(fqns)
    nodes: dict[str, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            if node.target in nodes:
                # A module called twice has one input range per call; one kernel cannot
                # take both, so the second call reads the first call's qparams.
                continue
            nodes[str(node.target)] = node

    def in_qparams(fqn: str) -> Any:
        source = nodes[fqn].args[0]
        assert isinstance(source, torch.fx.Node)
        key = f"node:{source.name}"
        if key not in stats:
            raise CalibrationError(
                f"calibration statistics have no entry {key!r}: they were collected on a "
                "different model. Calibrate this model again."
            )
        used_keys.append(key)
        return activation_qparams(stats[key], plan[fqn].activation)

    in_qp = {fqn: in_qparams(fqn) for fqn in nodes}
    # Fused clamps and int8 hand-offs, decided on the graph before it changes.
    post: dict[str, tuple[str, tuple[float, ...]]] = {}
    out_node: dict[str, torch.fx.Node] = {}
    for fqn, node in nodes.items():
        post[fqn], out_node[fqn] = ("none", ()), node
        if len(node.users) == 1:
            (user,) = node.users
            op = post_op_of(gm, user)
            if op is not None and op[0] in FUSABLE[type(gm.get_submodule(fqn))]:
                post[fqn], out_node[fqn] = op, user
    by_node = {n: f for f, n in nodes.items()}
    feeds: dict[str, str] = {}  # producer fqn -> the int8 consumer it writes uint8 for
    pools: list[torch.fx.Node] = []  # max-pools that will run on uint8
    for fqn, out in out_node.items():
        # Through max-pools and reshapes (they commute with rounding, so quantizing
        # before or after them gives the same integers) to a single static consumer.
        chain, node = [], out
        while len(node.users) == 1:
            (user,) = node.users
            if user in by_node:
                if user.args[0] is node and len(user.args) == 1 and not user.kwargs:
                    feeds[fqn] = by_node[user]
                    pools += [n for n in chain if _is_max_pool(gm, n)]
                break
            if not _transparent(gm, user) or user.args[0] is not node:
                break
            chain.append(user)
            node = user
    int8_in = set(feeds.values())
    for pool in pools:
        _pool_on_uint8(gm, pool)
    for fqn, node in nodes.items():
        module = gm.get_submodule(fqn)
        q, qp = quantized_weight(module.weight, plan[fqn])
        cls = StaticLinear if isinstance(module, nn.Linear) else StaticConv
        new = cls(
            module,
            q,
            qp,
            in_qp[fqn],
            in_qp[feeds[fqn]] if fqn in feeds else None,
            post_op=post[fqn],
            int8_input=fqn in int8_in,
        )
        set_submodule(gm, fqn, new)
        kernels[fqn] = new.kernel + (f" + fused {post[fqn][0]}" if post[fqn][0] != "none" else "")
        clamp = out_node[fqn]
        if clamp is not node:
            clamp.replace_all_uses_with(node)
            gm.graph.erase_node(clamp)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
