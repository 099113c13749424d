"""The gaze network (paper §3.1, Figs. 1-4) and its Table 3 variants.

``build_model(name, **overrides)`` builds a registered variant; ``list_models()`` names them.
Parts: :mod:`.encoder` (VGG-16-BN blocks 1-3), :mod:`.attention` (attentive ConvLSTM, Eqs. 1-9),
:mod:`.decoder` (structure decoder and classifier, Fig. 3; its fast path in :mod:`.fused_decoder`),
:mod:`.diagnosis` (Fig. 4), :mod:`.gazenet` (the whole network and the registry), :mod:`.output`
(:class:`GazeOutput`; :class:`GazeState` for gaze ablation).
"""

from .gazenet import GazeNet, GazeState, build_model, list_models, register_model
from .output import GazeOutput

__all__ = ["GazeNet", "GazeOutput", "GazeState", "build_model", "list_models", "register_model"]
