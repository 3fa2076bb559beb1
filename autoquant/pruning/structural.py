"""Which channels can be removed together: dependency groups from the torch.fx graph.

Removing output channel ``c`` of a layer is safe when every place its output reaches
either carries channel ``c`` through unchanged (BatchNorm, which is sliced too; ReLU-like
activations with f(0) = 0; pooling; flatten into a Linear) or consumes it as an input
channel (a dense Conv's ``in_channels``, a Linear's ``in_features``, which are sliced).
Residual adds tie the layers on both sides into one group that loses the same channels.
Anything else (concatenation, reshapes into heads, a channel-mixing function, the
model output, a module called twice, grouped convs) makes the group unsafe: it is left
whole and the reason is reported.

Transformer rules by structure, for models torch.fx cannot trace (Hugging Face BERT):
an FFN ``*.intermediate.dense`` -> ``*.output.dense`` pair (intermediate neurons), and
the attention heads of a BERT-style ``*.attention.self`` (query/key/value rows and the
``*.attention.output.dense`` columns, whole heads at a time).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

__all__ = ["ChannelGroup", "channel_groups"]

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# f(0) = 0 and channel-wise: a removed (all-zero) channel stays zero through these.
_ZERO_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_ZERO_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.tanh,
    torch.nn.functional.leaky_relu,
    torch.nn.functional.hardswish,
    torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
}
_ZERO_METHODS = {"relu", "contiguous", "tanh"}
_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass
class ChannelGroup:
    """Layers that lose the same output channels together.

    ``producers``: ops whose output channels (weight rows, bias) go; ``norms``: norm
    layers sliced alongside; ``consumers``: fqn -> ``(block, kind)``; input channels
    ``c*block .. c*block+block-1`` of the op go (``block`` > 1 after a flatten);
    ``heads``: head size when whole attention heads go (BERT rule), else 0;
    ``reason``: why the group cannot be pruned (empty when it can).
    """

    producers: list[str]
    channels: int
    norms: list[str] = field(default_factory=list)
    consumers: dict[str, int] = field(default_factory=dict)
    heads: int = 0
    head_owner: str = ""
    reason: str = ""

    @property
    def safe(self) -> bool:
        return not self.reason


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _is_flatten(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


class _Tracer:
    """Walks one group outwards from a producer over the traced graph."""

    def __init__(self, gm: torch.fx.GraphModule, modules: dict[str, nn.Module]) -> None:
        self.gm, self.modules = gm, modules
        self.calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        self.node_of = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}

    def group(self, fqn: str) -> ChannelGroup:
        module = self.modules[fqn]
        group = ChannelGroup(producers=[], channels=_out_channels(module))
        seen: set[torch.fx.Node] = set()
        pending_producers = [fqn]
        pending_nodes: list[torch.fx.Node] = []
        flattened: set[torch.fx.Node] = set()
        try:
            while pending_producers or pending_nodes:
                if pending_producers:
                    name = pending_producers.pop()
                    if name in group.producers:
                        continue
                    self._check_producer(name, group)
                    group.producers.append(name)
                    pending_nodes.append(self.node_of[name])
                    continue
                node = pending_nodes.pop()
                if node in seen:
                    continue
                seen.add(node)
                for user in list(node.users):
                    self._follow(node, user, group, pending_nodes, pending_producers, flattened)
        except _Unsafe as exc:
            group.reason = str(exc)
        return group

    def _check_producer(self, name: str, group: ChannelGroup) -> None:
        module = self.modules.get(name)
        if not isinstance(module, _PRODUCERS) or name not in self.node_of:
            raise _Unsafe(f"{name!r} is tied to the group but is not a Conv/Linear called once")
        if self.calls[name] != 1:
            raise _Unsafe(f"{name!r} is called {self.calls[name]} times (shared weights)")
        if not isinstance(module, nn.Linear) and module.groups != 1:
            raise _Unsafe(f"{name!r} is a grouped/depthwise conv (groups={module.groups})")
        if _out_channels(module) != group.channels:
            raise _Unsafe(
                f"{name!r} has {_out_channels(module)} channels, the group {group.channels}"
            )

    def _follow(self, node, user, group, pending_nodes, pending_producers, flattened) -> None:
        where = f"{user.name} ({user.op} {getattr(user.target, '__name__', user.target)})"
        if user.op == "output":
            raise _Unsafe(f"the channels reach the model output at {node.name}")
        if user.op == "call_module":
            m = self.modules[user.target]
            if isinstance(m, _NORMS) and node not in flattened:
                if self.calls[user.target] != 1:
                    raise _Unsafe(f"norm {user.target!r} is called more than once")
                group.norms.append(user.target)
                pending_nodes.append(user)
                return
            if isinstance(m, _ZERO_MODULES) and node not in flattened:
                pending_nodes.append(user)
                return
            if isinstance(m, nn.Flatten) and _is_flatten(user, self.modules):
                flattened.add(user)
                pending_nodes.append(user)
                return
            if isinstance(m, _PRODUCERS) and user.args and user.args[0] is node:
                return self._consumer(user.target, m, group, node in flattened)
            raise _Unsafe(f"the channels feed {where}, which cannot be sliced")
        if user.op == "call_function":
            if user.target in _ZERO_FUNCTIONS and user.args and user.args[0] is node:
                if node in flattened:
                    raise _Unsafe(f"the flattened channels feed {where}")
                pending_nodes.append(user)
                return
            if _is_flatten(user, self.modules) and node not in flattened:
                flattened.add(user)
                pending_nodes.append(user)
                return
            if user.target in _ADDS and len(user.args) == 2 and not user.kwargs:
                other = user.args[1] if user.args[0] is node else user.args[0]
                if not isinstance(other, torch.fx.Node):
                    raise _Unsafe(f"the channels get a constant added at {where}")
                # The other operand carries the same channels: its producers join.
                self._origins(other, group, pending_producers, pending_nodes)
                pending_nodes.append(user)
                return
            raise _Unsafe(f"the channels feed {where}, which cannot be sliced")
        if user.op == "call_method" and user.target in _ZERO_METHODS:
            pending_nodes.append(user)
            return
        raise _Unsafe(f"the channels feed {where}, which cannot be sliced")

    def _origins(self, node, group, pending_producers, pending_nodes) -> None:
        """Walk back from an add's other operand to the producers it comes from."""
        pending_nodes.append(node)
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, _PRODUCERS):
                pending_producers.append(node.target)
                return
            if isinstance(m, _NORMS):
                if node.target not in group.norms:
                    group.norms.append(node.target)
                return self._origins(node.args[0], group, pending_producers, pending_nodes)
            if isinstance(m, _ZERO_MODULES):
                return self._origins(node.args[0], group, pending_producers, pending_nodes)
        if node.op == "call_function":
            if node.target in _ZERO_FUNCTIONS:
                return self._origins(node.args[0], group, pending_producers, pending_nodes)
            if node.target in _ADDS and len(node.args) == 2:
                for arg in node.args:
                    if not isinstance(arg, torch.fx.Node):
                        raise _Unsafe(f"a constant is added at {node.name}")
                    self._origins(arg, group, pending_producers, pending_nodes)
                return
        if node.op == "call_method" and node.target in _ZERO_METHODS:
            return self._origins(node.args[0], group, pending_producers, pending_nodes)
        raise _Unsafe(
            f"a residual add ties the channels to {node.name} ({node.op}), whose channels "
            "come from no prunable layer (e.g. the model input)"
        )

    def _consumer(self, name: str, m: nn.Module, group: ChannelGroup, flat: bool) -> None:
        if self.calls[name] != 1:
            raise _Unsafe(f"consumer {name!r} is called more than once")
        if isinstance(m, nn.Linear):
            if m.in_features % group.channels:
                raise _Unsafe(
                    f"{name!r} has {m.in_features} inputs, not a multiple of {group.channels}"
                )
            block = m.in_features // group.channels
            if block != 1 and not flat:
                raise _Unsafe(f"{name!r} reads the channels in another layout")
        else:
            if m.groups != 1:
                raise _Unsafe(f"consumer {name!r} is a grouped/depthwise conv")
            if flat or m.in_channels != group.channels:
                raise _Unsafe(f"consumer {name!r} reads the channels in another layout")
            block = 1
        group.consumers[name] = block


class _Unsafe(Exception):
    pass


def _bert_groups(model: nn.Module) -> dict[str, ChannelGroup]:
    """FFN neurons and attention heads of Hugging Face BERT-style layers, by structure."""
    modules = dict(model.named_modules())
    out: dict[str, ChannelGroup] = {}
    for name, m in modules.items():
        if name.endswith(".intermediate.dense") and isinstance(m, nn.Linear):
            layer = name[: -len(".intermediate.dense")]
            down = modules.get(f"{layer}.output.dense")
            if isinstance(down, nn.Linear) and down.in_features == m.out_features:
                out[name] = ChannelGroup(
                    producers=[name],
                    channels=m.out_features,
                    consumers={f"{layer}.output.dense": 1},
                )
        if name.endswith(".attention.self") and all(
            isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value")
        ):
            att = name[: -len(".self")]
            proj = modules.get(f"{att}.output.dense")
            head = getattr(m, "attention_head_size", 0)
            if isinstance(proj, nn.Linear) and head and m.value.out_features % head == 0:
                group = ChannelGroup(
                    producers=[f"{name}.query", f"{name}.key", f"{name}.value"],
                    channels=m.value.out_features,
                    consumers={f"{att}.output.dense": 1},
                    heads=head,
                    head_owner=name,
                )
                for p in group.producers:
                    out[p] = group
    return out


def channel_groups(model: nn.Module, fqns: list[str] | None = None) -> dict[str, ChannelGroup]:
    """The channel group of each producer op (every Conv/Linear, or ``fqns``).

    Safe groups list every layer to slice; unsafe ones say why in ``reason``.
    """
    modules = dict(model.named_modules())
    wanted = (
        fqns if fqns is not None else [n for n, m in modules.items() if isinstance(m, _PRODUCERS)]
    )
    out: dict[str, ChannelGroup] = {}
    bert = _bert_groups(model)
    for name in wanted:
        if name in bert:
            out[name] = bert[name]
    rest = [n for n in wanted if n not in out]
    if not rest:
        return out
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot analyse"
        reason = f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc)[:120]})"
        for name in rest:
            m = modules[name]
            out[name] = ChannelGroup(producers=[name], channels=_out_channels(m), reason=reason)
        return out
    tracer = _Tracer(gm, dict(gm.named_modules()))
    for name in rest:
        m = modules.get(name)
        if not isinstance(m, _PRODUCERS) or name not in tracer.node_of:
            out[name] = ChannelGroup(
                producers=[name],
                channels=_out_channels(m) if isinstance(m, _PRODUCERS) else 0,
                reason=f"{name!r} is not a Conv/Linear called in the traced graph",
            )
            continue
        out[name] = tracer.group(name)
    return out
