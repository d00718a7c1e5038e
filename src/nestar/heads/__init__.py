"""Heads: self-contained per-token generative heads with `loss()` and `sample()`."""

from nestar.heads.base import Head
from nestar.heads.flow_joint import JointFlowHead, build_flow_head
from nestar.heads.flow_mlp import FlowHeadConfig, FlowMLPHead

__all__ = ["FlowHeadConfig", "FlowMLPHead", "Head", "JointFlowHead", "build_flow_head"]
