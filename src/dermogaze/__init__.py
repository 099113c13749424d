"""dermogaze: explainable skin-lesion diagnosis from sequences of gazes (Esteve-Cogollos & Fernández-Torres)."""

__version__ = "0.1.0"
