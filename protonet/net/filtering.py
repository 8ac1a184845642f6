"""Which layers a net state includes (Caffe's Net::FilterNet / StateMeetsRule)."""
from protonet import caffe_pb2
from protonet.errors import ProtonetError

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def parse_phase(phase):
    """'TRAIN'/'TEST' (any case) or the proto enum value -> the enum value."""
    if isinstance(phase, str):
        key = phase.upper()
        if key not in PHASES:
            raise ProtonetError(f"phase must be TRAIN or TEST, got '{phase}'")
        return PHASES[key]
    if phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        return int(phase)
    raise ProtonetError(f"phase must be TRAIN or TEST, got {phase!r}")


def state_meets_rule(state, rule):
    """True when NetState `state` satisfies NetStateRule `rule` (every condition given must hold)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer, state):
    if len(layer.include) and len(layer.exclude):
        raise ProtonetError(f"layer {layer.name}: specify either include or exclude rules, not both")
    if len(layer.include):
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def filter_net(net_param, state):
    """A copy of `net_param` holding only the layers `state` includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        if layer_included(layer, state):
            out.layer.add().CopyFrom(layer)
    return out
