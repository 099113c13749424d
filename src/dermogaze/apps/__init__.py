"""What runs a trained network for its users: challenge files (:mod:`.predict`), ONNX export (:mod:`.export`)
and the viewer in the browser (:mod:`.serve`)."""
